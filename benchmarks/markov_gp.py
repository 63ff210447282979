"""Markov GP scaling: log marginal likelihood and its gradient against T, beside exact and sparse GPs.

One operation is timed for every method: the training objective of GP regression on a time series
and its gradient with respect to every hyperparameter (one forward and one backward pass), float64.

* vitorch ``ssm.MarkovGP`` — Matérn-3/2 as a 2-state SDE, per-step Kalman filter by associative scan,
  ``O(T)``; irregular (random, sorted) times, so every step has its own ``expm(F dt)``.
* vitorch ``gp.ExactGP`` — dense Cholesky, ``O(T^3)``; run while it fits the time budget.
* GPyTorch ``ExactGP`` with ``ExactMarginalLogLikelihood``, forced to Cholesky
  (``max_cholesky_size``) so that both exact peers compute the same number; same kernel
  (``ScaleKernel(MaternKernel(nu=1.5))``), hyperparameters and noise.
* vitorch ``gp.SVGP`` — ``M = 64`` inducing times on a grid, the full series as one batch
  (``O(T M^2)``): an approximation, timed for scale (its bound is below the exact one).

Before timing, the Markov GP's log-likelihood is checked against vitorch's and GPyTorch's exact
GPs at the smallest ``T`` (equal to 1e-6 relative, float64; GPyTorch adds its own jitter).  Each
line is ``{"bench", "case", "vitorch_s", "peer", "peer_s", "ratio"}`` with ``ratio = peer_s /
vitorch_s`` (> 1: the Markov GP faster), ``T`` and the clock.  The last lines give each method's
log-log slope of time against ``T`` (1 for linear, 3 for cubic).

Run: ``python benchmarks/markov_gp.py [--quick] [--threads 1 --cpu-time]``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vitorch.models import gp, ssm  # noqa: E402

import _harness  # noqa: E402

LENGTHSCALE, NOISE, M = 1.0, 0.1, 64


def make_data(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(T, generator=g, dtype=torch.float64) * T / 10).values  # ~10 points per lengthscale
    y = torch.sin(t) + 0.3 * torch.randn(T, generator=g, dtype=torch.float64)
    return t.unsqueeze(-1), y


def markov_step(x, y):
    model = ssm.MarkovGP(gp.Matern32(lengthscale=LENGTHSCALE), noise=NOISE)

    def step():
        model.zero_grad(set_to_none=True)
        ll = model.log_marginal_likelihood(x, y)
        ll.backward()
        return ll

    return step


def exact_step(x, y):
    model = gp.ExactGP(gp.Matern32(lengthscale=LENGTHSCALE), noise=NOISE)

    def step():
        model.zero_grad(set_to_none=True)
        ll = model.log_marginal_likelihood(x, y)
        ll.backward()
        return ll

    return step


def svgp_step(x, y):
    z = torch.linspace(float(x.min()), float(x.max()), M, dtype=torch.float64).unsqueeze(-1)
    model = gp.SVGP(gp.Matern32(lengthscale=LENGTHSCALE), z, gp.GaussianLikelihood(NOISE), num_data=len(y))

    def step():
        model.zero_grad(set_to_none=True)
        loss = model((x, y)).loss
        loss.backward()
        return -loss * len(y)

    return step


def gpytorch_step(gpytorch, x, y):
    class Model(gpytorch.models.ExactGP):
        def __init__(self, lik):
            super().__init__(x, y, lik)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=1.5))

        def forward(self, xx):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(xx), self.covar_module(xx))

    lik = gpytorch.likelihoods.GaussianLikelihood().double()
    model = Model(lik).double()
    model.covar_module.base_kernel.lengthscale = LENGTHSCALE
    model.covar_module.outputscale = 1.0
    lik.noise = NOISE
    model.train(), lik.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)

    def step():
        model.zero_grad(set_to_none=True)
        with gpytorch.settings.max_cholesky_size(10**8), gpytorch.settings.cholesky_jitter(double_value=1e-12):
            ll = mll(model(x), y) * len(y)  # GPyTorch divides by N
        ll.backward()
        return ll

    return step


def slope(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 2:
        return None
    (t0, s0), (t1, s1) = points[0], points[-1]
    return math.log(s1 / s0) / math.log(t1 / t0)


def main() -> None:
    args = _harness.parser(__doc__.splitlines()[0]).parse_args()
    _harness.setup(args)
    torch.set_default_dtype(torch.float64)
    gpytorch, why = _harness.try_import("gpytorch")
    if args.quick:
        sizes, exact_max, repeats = (300, 1000, 5000), 1000, args.repeats or 3
    else:
        sizes, exact_max, repeats = (1000, 3000, 10000, 100000, 1000000), 3000, args.repeats or 5
    clock = _harness.clock_name()

    # Correctness first: the three exact answers agree at the smallest size.
    x, y = make_data(sizes[0])
    ll_m = float(markov_step(x, y)().detach())
    ll_e = float(exact_step(x, y)().detach())
    assert abs(ll_m - ll_e) < 1e-6 * abs(ll_e), (ll_m, ll_e)
    if gpytorch is not None:
        ll_g = float(gpytorch_step(gpytorch, x, y)().detach())
        assert abs(ll_m - ll_g) < 1e-6 * abs(ll_g), (ll_m, ll_g)

    series: dict[str, list[tuple[int, float]]] = {
        "markov": [],
        "vitorch.ExactGP": [],
        "gpytorch": [],
        "vitorch.SVGP": [],
    }
    for T in sizes:
        x, y = make_data(T)
        reps = repeats if T <= 100000 else max(1, repeats // 2)
        warm = 1 if T <= 100000 else 0
        m_s = _harness.median_time(markov_step(x, y), reps, warmup=warm)
        series["markov"].append((T, m_s))
        case = f"loglik+grad Matern32 T={T}"
        extra = {"T": T, "clock": clock, "markov_us_per_step": 1e6 * m_s / T}
        if T <= exact_max:
            e_s = _harness.median_time(exact_step(x, y), reps, warmup=1)
            series["vitorch.ExactGP"].append((T, e_s))
            _harness.report("markov_gp", case, m_s, "vitorch.ExactGP", e_s, **extra)
            if gpytorch is None:
                _harness.report("markov_gp", case, m_s, "gpytorch", None, skipped=why, **extra)
            else:
                g_s = _harness.median_time(gpytorch_step(gpytorch, x, y), reps, warmup=1)
                series["gpytorch"].append((T, g_s))
                _harness.report("markov_gp", case, m_s, "gpytorch", g_s, **extra)
        else:
            skip = f"O(T^3) dense Cholesky: T={T} is past this run's budget (largest exact T: {exact_max})"
            _harness.report("markov_gp", case, m_s, "vitorch.ExactGP", None, skipped=skip, **extra)
            _harness.report("markov_gp", case, m_s, "gpytorch", None, skipped=skip, **extra)
        s_s = _harness.median_time(svgp_step(x, y), reps, warmup=warm)
        series["vitorch.SVGP"].append((T, s_s))
        _harness.report("markov_gp", case, m_s, "vitorch.SVGP", s_s, M=M, approximate=True, **extra)

    for peer in ("vitorch.ExactGP", "gpytorch", "vitorch.SVGP"):
        pts = series[peer]
        if not pts:
            continue
        common = [p for p in series["markov"] if p[0] <= pts[-1][0]]
        _harness.report(
            "markov_gp",
            f"scaling: log-log slope of time vs T over T={pts[0][0]}..{pts[-1][0]}",
            common[-1][1],
            peer,
            pts[-1][1],
            T=pts[-1][0],
            clock=clock,
            markov_slope=slope(common),
            peer_slope=slope(pts),
            markov_slope_all_T=slope(series["markov"]),
        )


if __name__ == "__main__":
    main()
