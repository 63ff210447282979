"""Flows against zuko: MAF (affine) and NSF (autoregressive rational-quadratic splines).

Same architecture on both sides: 3 masked autoregressive transforms with MADE
conditioners of hidden widths (64, 64), the order reversed every other transform, a
standard normal base; NSF uses 8 bins on [-5, 5].  In both libraries MAF evaluates
``log_prob`` in one MADE pass per transform and samples in ``D`` passes.

Cases (median seconds per call, timed in alternation in one process):

* ``log_prob`` of a batch (no graph);
* ``rsample_and_log_prob`` of a batch (no graph; ``D`` sequential passes, so the
  64-D case uses a smaller batch, named in the case);
* ``fwd+bwd``: ``log_prob(x).mean()`` and its backward to every parameter
  (maximum-likelihood training).

    python benchmarks/flows.py [--quick] [--threads 2] [--repeats 5]

One JSON line per comparison; ``ratio = zuko_s / vitorch_s`` (``> 1``: vitorch faster).
"""

from __future__ import annotations

import torch

from vitorch import flows

from _harness import interleaved_medians, median_time, parser, report, setup, try_import

TRANSFORMS, HIDDEN, BINS, BOUND, ACT = 3, (64, 64), 8, 5.0, torch.nn.ELU


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


def calls(make_dist, x: torch.Tensor, sample_batch: int) -> dict:
    """The three timed operations on the flow that ``make_dist()`` returns."""
    return {
        f"log_prob/b{len(x)}": lambda: make_dist().log_prob(x),
        f"rsample_and_log_prob/b{sample_batch}": lambda: make_dist().rsample_and_log_prob((sample_batch,)),
        f"fwd+bwd/b{len(x)}": lambda: make_dist().log_prob(x).mean().backward(),
    }


def cases(args):
    if args.quick:
        return [(2, 256, 256), (64, 256, 8)]
    return [(2, 65_536, 65_536), (64, 65_536, 4_096)]


def main():
    args = parser(__doc__).parse_args()
    setup(args)
    repeats = args.repeats or (2 if args.quick else 7)
    zuko, reason = try_import("zuko")
    for kind in ("maf", "nsf"):
        for dim, batch, sample_batch in cases(args):
            x = torch.randn(batch, dim)
            ours = calls(vitorch_flow(kind, dim), x, sample_batch)
            theirs = calls(zuko_flow(zuko, kind, dim), x, sample_batch) if zuko is not None else None
            for name, mine in ours.items():
                case = f"{kind}/{dim}d/{name}"
                with torch.set_grad_enabled(name.startswith("fwd+bwd")):
                    if theirs is None:
                        report("flows", case, median_time(mine, repeats, warmup=1), "zuko", None, skipped=reason)
                    else:
                        t = interleaved_medians({"vitorch": mine, "zuko": theirs[name]}, repeats, warmup=1)
                        report("flows", case, t["vitorch"], f"zuko {zuko.__version__}", t["zuko"])


if __name__ == "__main__":
    main()
