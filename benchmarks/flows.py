"""Flows against zuko: MAF (affine) and NSF (autoregressive rational-quadratic splines).

Same architecture on both sides, checked by counting parameters (both counts are in
every JSON line, and the script refuses to compare flows whose counts differ): 3
masked autoregressive transforms with MADE conditioners of hidden widths (64, 64)
and ELU activations (vitorch's default; zuko is given ``activation=nn.ELU``), the
order reversed every other transform, a standard normal base; NSF uses 8 bins on
[-5, 5].  In both libraries the univariate map runs in the density direction, so
``log_prob`` is one MADE pass per transform with the spline's rational evaluation,
and sampling solves the map's inverse one dimension at a time (zuko reruns the whole
MADE for each of the ``D`` dimensions; vitorch computes each hidden unit once).

Cases (median seconds per call, the two libraries timed in alternation in one
process), all at batch 65,536 in 2-D and 64-D:

* ``log_prob`` of a batch (no graph);
* ``rsample_and_log_prob`` of a batch (no graph);
* ``fwd+bwd``: ``log_prob(x).mean()`` and its backward to every parameter
  (maximum-likelihood training).

Cases whose single call takes seconds (zuko's 64-D sampling and spline cases) run
without a warm-up and with two repeats, so the full run stays within a few minutes.
One case cannot run at 65,536: zuko's 64-D NSF sampling reruns the MADE and the
spline on all 64 dimensions for each of the 64 steps, which on a 2-core CPU takes
minutes per call and needs about 0.7 MB per sample (3.1 GB at batch 4,096; ~45 GB at
65,536, more than the benchmark machine has; one measured call at 16,384 took 93 s,
more than the linear estimate).  Any case whose interleaved round is
estimated (from one call of each at 1/32 of the batch) above ``ROUND_BUDGET_S``
halves its batch until it fits; the case name carries the batch used and the line
records ``batch_reduced_from`` and the estimate.

    python benchmarks/flows.py [--quick] [--threads 2] [--repeats 7] [--cpu-time --threads 1]

One JSON line per comparison; ``ratio = zuko_s / vitorch_s`` (``> 1``: vitorch faster).
"""

from __future__ import annotations

import time

import torch

from vitorch import flows

from _harness import clock_name, interleaved_medians, median_time, parser, report, setup, try_import

TRANSFORMS, HIDDEN, BINS, BOUND, ACT = 3, (64, 64), 8, 5.0, torch.nn.ELU
SLOW_CALL_S = 3.0  # rounds estimated slower than this get no warm-up and two repeats
ROUND_BUDGET_S = 30.0  # a case whose round would take longer runs on a halved batch (see the docstring)


def vitorch_flow(kind: str, dim: int) -> flows.ConditionalFlow:
    def transformer():
        return flows.AffineMap() if kind == "maf" else flows.RQSpline(BINS, BOUND)

    orders = [list(range(dim)) if i % 2 == 0 else list(range(dim))[::-1] for i in range(TRANSFORMS)]
    return flows.ConditionalFlow([flows.MAF(dim, transformer(), HIDDEN, order=o, activation=ACT) for o in orders])


def zuko_flow(zuko, kind: str, dim: int):
    if kind == "maf":
        return zuko.flows.MAF(dim, transforms=TRANSFORMS, hidden_features=HIDDEN, activation=ACT)
    return zuko.flows.NSF(dim, transforms=TRANSFORMS, bins=BINS, hidden_features=HIDDEN, activation=ACT)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


OPS = ("log_prob", "rsample_and_log_prob", "fwd+bwd")


def call(make_dist, op: str, x: torch.Tensor):
    """One timed operation on the flow that ``make_dist()`` returns, at ``x``'s batch size."""
    if op == "log_prob":
        return lambda: make_dist().log_prob(x)
    if op == "rsample_and_log_prob":
        return lambda: make_dist().rsample_and_log_prob((len(x),))
    return lambda: make_dist().log_prob(x).mean().backward()


def estimate_s(makers: dict, op: str, x: torch.Tensor, batch: int) -> float:
    """Seconds one interleaved round at ``batch`` will take, from one call of each at ``len(x)``."""
    t0 = time.perf_counter()
    for make in makers.values():
        call(make, op, x)()
    return (time.perf_counter() - t0) * batch / len(x)


def main():
    args = parser(__doc__).parse_args()
    setup(args)
    repeats = args.repeats or (2 if args.quick else 7)
    batch = 256 if args.quick else 65_536
    probe = max(batch // 32, 16)
    zuko, reason = try_import("zuko")
    for kind in ("maf", "nsf"):
        for dim in (2, 64):
            x = torch.randn(batch, dim)
            makers = {"vitorch": vitorch_flow(kind, dim)}
            extra = {"vitorch_params": num_params(makers["vitorch"])}
            if zuko is not None:
                makers["zuko"] = zuko_flow(zuko, kind, dim)
                extra["peer_params"] = num_params(makers["zuko"])
                if extra["peer_params"] != extra["vitorch_params"]:
                    raise RuntimeError(f"{kind} {dim}-D: architectures differ ({extra})")
            for op in OPS:
                with torch.set_grad_enabled(op == "fwd+bwd"):
                    est, b, note = estimate_s(makers, op, x[:probe], batch), batch, {}
                    while est * b / batch > ROUND_BUDGET_S and b > probe:
                        b //= 2  # a round that would not fit the budget runs on a smaller batch, named in the case
                    if b < batch:
                        note = {"batch_reduced_from": batch, "estimated_round_s_at_full_batch": round(est, 1)}
                    slow = est * b / batch > SLOW_CALL_S
                    n, warmup = (min(repeats, 2), 0) if slow else (repeats, 1)
                    fns = {name: call(make, op, x[:b]) for name, make in makers.items()}
                    case = f"{kind}/{dim}d/{op}/b{b}"
                    note["clock"] = clock_name()
                    if zuko is None:
                        t = median_time(fns["vitorch"], n, warmup)
                        report("flows", case, t, "zuko", None, skipped=reason, **extra, **note)
                    else:
                        t = interleaved_medians(fns, n, warmup=warmup)
                        report("flows", case, t["vitorch"], f"zuko {zuko.__version__}", t["zuko"], **extra, **note)


if __name__ == "__main__":
    main()
