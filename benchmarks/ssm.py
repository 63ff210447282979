"""State-space model benchmarks.

1. Training-step time against series length T in {100, 1,000, 10,000}: a deep-Markov-model
   step (``SSMVI``: structured inference network + linear-Gaussian model written with the
   generic ``StateSpaceModel``, IWAE K=4 with DReG, forward + backward + Adam).  Linear growth in T
   is expected; there is no peer, so these lines carry ``skipped`` and ``us_per_time_step``.
2. Exact Kalman log-likelihood, sequential and parallel (associative scan), against Pyro's
   ``GaussianHMM.log_prob`` on the same model and data (checked equal before timing).

Usage: python benchmarks/ssm.py [--quick] [--threads N] [--repeats R]
"""

from __future__ import annotations

import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(__file__))
import vitorch as vt  # noqa: E402
from vitorch.models import ssm  # noqa: E402

from _harness import interleaved_medians, median_time, parser, report, setup, try_import  # noqa: E402


def random_lgssm(D: int, p: int, generator: torch.Generator):
    F = torch.randn(D, D, generator=generator)
    F = 0.9 * F / torch.linalg.matrix_norm(F, ord=2)
    A = torch.randn(D, D, generator=generator)
    Q = A @ A.T / D + 0.5 * torch.eye(D)
    H = torch.randn(p, D, generator=generator)
    R = 0.5 * torch.eye(p)
    return F, Q, H, R


def bench_training_step(lengths, repeats):
    g = torch.Generator().manual_seed(0)
    F, Q, H, R = random_lgssm(2, 1, g)
    lg = ssm.LinearGaussianSSM(F, Q, H, R, torch.zeros(2), torch.eye(2))
    model = ssm.StateSpaceModel(
        lambda: torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)),
        lambda x, t: torch.distributions.MultivariateNormal(x @ F.T, Q),
        lambda x, t: torch.distributions.MultivariateNormal(x @ H.T, R),
    )

    def make_step(y, vi, opt):
        def step():
            out = vi(y)
            opt.zero_grad()
            out.loss.backward()
            opt.step()

        return step

    for T in lengths:
        _, y = lg.sample(T, (1,))  # one sequence: y [1, T, 1]
        guide = ssm.StructuredInferenceNetwork(1, 2, rnn_dim=32)
        vi = ssm.SSMVI(model, guide, 4, objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
        t = median_time(make_step(y, vi, torch.optim.Adam(guide.parameters(), lr=1e-3)), repeats, warmup=1)
        report(
            "ssm",
            f"dmm_train_step_T{T}",
            t,
            "none",
            None,
            skipped="scaling case, no peer",
            us_per_time_step=1e6 * t / T,
        )


def pyro_hmm(F, Q, H, R, m0, P0):
    """Pyro's GaussianHMM for the same model: row-vector matrices, initial state one step before x_1."""
    from pyro.distributions import GaussianHMM, MultivariateNormal

    D, p = F.shape[-1], H.shape[-2]
    zeros = torch.zeros((), dtype=F.dtype)
    return GaussianHMM(
        MultivariateNormal(m0, P0),
        F.T,
        MultivariateNormal(zeros.expand(D), Q),
        H.T,
        MultivariateNormal(zeros.expand(p), R),
    )


def bench_kalman(cases, repeats):
    pyro, reason = try_import("pyro")
    g = torch.Generator().manual_seed(1)
    for B, T, D, p in cases:
        F, Q, H, R = random_lgssm(D, p, g)
        m0, P0 = torch.zeros(D), torch.eye(D)
        # Pyro's initial state precedes the first transition; ours is x_1 itself.
        m = ssm.LinearGaussianSSM(F, Q, H, R, F @ m0, F @ P0 @ F.T + Q)
        _, y = m.sample(T, (B,))
        case = f"kalman_log_prob_B{B}_T{T}_D{D}_p{p}"
        fns = {"seq": partial(m.log_prob, y, parallel=False), "par": partial(m.log_prob, y, parallel=True)}
        if pyro is not None:
            # Same model and data before timing: compare in float64, where both are exact to ~1e-12.
            f64 = [t.double() for t in (F, Q, H, R, m0, P0)]
            ref = pyro_hmm(*f64).log_prob(y.double())
            ours = ssm.LinearGaussianSSM(*f64[:4], f64[0] @ f64[4], f64[0] @ f64[5] @ f64[0].T + f64[1]).log_prob(
                y.double()
            )
            if not torch.allclose(ref, ours, rtol=1e-9, atol=1e-9):
                raise RuntimeError(f"{case}: vitorch and Pyro disagree: {ours[:3]} vs {ref[:3]}")
            fns["pyro"] = partial(pyro_hmm(F, Q, H, R, m0, P0).log_prob, y)
        times = interleaved_medians(fns, repeats, warmup=1)
        peer_s = times.get("pyro")
        extra = {} if pyro is not None else {"skipped": reason}
        report("ssm", case + "_sequential", times["seq"], "pyro.GaussianHMM", peer_s, **extra)
        report("ssm", case + "_parallel", times["par"], "pyro.GaussianHMM", peer_s, **extra)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    if args.quick:
        lengths, repeats = (100, 200), args.repeats or 1
        cases = [(16, 200, 2, 1), (64, 1_000, 2, 1)]
    else:
        lengths, repeats = (100, 1_000, 10_000), args.repeats or 5
        cases = [(64, 1_000, 2, 1), (16, 10_000, 4, 2), (256, 100, 8, 3)]
    bench_training_step(lengths, repeats)
    bench_kalman(cases, repeats)


if __name__ == "__main__":
    main()
