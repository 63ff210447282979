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

    python benchmarks/flows.py [--quick] [--threads 2] [--repeats 7]

One JSON line per comparison; ``ratio = zuko_s / vitorch_s`` (``> 1``: vitorch faster).
"""

from __future__ import annotations

import time

import torch

from vitorch import flows

from _harness import interleaved_medians, median_time, parser, report, setup, try_import

TRANSFORMS, HIDDEN, BINS, BOUND, ACT = 3, (64, 64), 8, 5.0, torch.nn.ELU
SLOW_CALL_S = 3.0  # calls estimated slower than this get no warm-up and two repeats


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


def calls(make_dist, x: torch.Tensor) -> dict:
    """The three timed operations on the flow that ``make_dist()`` returns, at ``x``'s batch."""
    n = len(x)
    return {
        f"log_prob/b{n}": lambda: make_dist().log_prob(x),
        f"rsample_and_log_prob/b{n}": lambda: make_dist().rsample_and_log_prob((n,)),
        f"fwd+bwd/b{n}": lambda: make_dist().log_prob(x).mean().backward(),
    }


def estimate_s(fns: dict, probe: dict, scale: float) -> float:
    """Seconds one round of ``fns`` will take, from one call of each on a batch ``scale`` times smaller."""
    t0 = time.perf_counter()
    for fn in probe.values():
        fn()
    return (time.perf_counter() - t0) * scale


def main():
    args = parser(__doc__).parse_args()
    setup(args)
    repeats = args.repeats or (2 if args.quick else 7)
    batch = 256 if args.quick else 65_536
    probe_batch = max(batch // 32, 16)
    zuko, reason = try_import("zuko")
    for kind in ("maf", "nsf"):
        for dim in (2, 64):
            x, x_probe = torch.randn(batch, dim), torch.randn(probe_batch, dim)
            mine = vitorch_flow(kind, dim)
            ours, ours_probe = calls(mine, x), calls(mine, x_probe)
            theirs = theirs_probe = None
            extra = {"vitorch_params": num_params(mine)}
            if zuko is not None:
                peer = zuko_flow(zuko, kind, dim)
                extra["peer_params"] = num_params(peer)
                if extra["peer_params"] != extra["vitorch_params"]:
                    raise RuntimeError(f"{kind} {dim}-D: architectures differ ({extra})")
                theirs, theirs_probe = calls(peer, x), calls(peer, x_probe)
            for (name, fn), probe in zip(ours.items(), ours_probe.values()):
                case = f"{kind}/{dim}d/{name}"
                with torch.set_grad_enabled(name.startswith("fwd+bwd")):
                    fns = {"vitorch": fn}
                    probes = {"vitorch": probe}
                    if theirs is not None:
                        fns["zuko"] = theirs[name]
                        probes["zuko"] = theirs_probe[name.replace(f"b{batch}", f"b{probe_batch}")]
                    slow = estimate_s(fns, probes, batch / probe_batch) > SLOW_CALL_S
                    n, warmup = (min(repeats, 2), 0) if slow else (repeats, 1)
                    if theirs is None:
                        report("flows", case, median_time(fn, n, warmup), "zuko", None, skipped=reason, **extra)
                    else:
                        t = interleaved_medians(fns, n, warmup=warmup)
                        report("flows", case, t["vitorch"], f"zuko {zuko.__version__}", t["zuko"], **extra)


if __name__ == "__main__":
    main()
