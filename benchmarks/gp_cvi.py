"""CVI natural-gradient steps on a Bernoulli SVGP: steps and time to the same ELBO, against
GPyTorch's natural-gradient optimizer (NGD) and against Adam on the same vitorch SVGP.

Problem: binary classification in 2-D (a noisy XOR of two sine waves), a probit link (GPyTorch's
``BernoulliLikelihood``; vitorch's ``BernoulliProbit``), both expected log-likelihoods by 20-node
Gauss–Hermite quadrature, an RBF kernel with fixed hyperparameters (lengthscale 0.5, variance 2),
M inducing inputs (k-means centres, fixed), the same jitter on K_mm (GPyTorch's float64 default,
1e-6), whitened full-rank q(u) started at N(0, I), float64,
full-batch steps: only q is trained, so every method climbs the same concave bound to the same
optimum.  Methods:

* vitorch ``cvi_step(model, X, y, lr=1)`` (the CVI / natural-gradient step in q's natural parameters);
* GPyTorch ``NaturalVariationalDistribution`` + ``gpytorch.optim.NGD(lr=1)`` (the same update);
* vitorch ``SVGP`` + ``torch.optim.Adam(lr=0.05)`` on q's Cholesky parameters (peer ``torch``).

The target is the optimum's ELBO (50 CVI steps) less 0.1 nats, every method's q scored by the
same function (vitorch's bound; both libraries' q land on the same optimum).  Reported: steps to reach it,
median seconds per step (ELBO evaluations between steps are not timed), ``vitorch_s`` / ``peer_s``
= steps x median step time, ``ratio = peer_s / vitorch_s``, and each method's final ELBO.

Run: ``python benchmarks/gp_cvi.py [--quick] [--threads 1 --cpu-time]``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vitorch.families import FullRankNormal  # noqa: E402
from vitorch.models import gp  # noqa: E402
from vitorch.models.gp import cvi  # noqa: E402

import _harness  # noqa: E402

LENGTH, VARIANCE, GAP, ADAM_LR = 0.5, 2.0, 0.1, 0.05
JITTER = 1e-6  # GPyTorch's float64 jitter on K_mm, absolute; vitorch's is relative to the mean diagonal


def make_data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 - 2
    f = torch.sin(2 * x[:, 0]) * torch.sin(2 * x[:, 1]) * 3
    y = (f + torch.randn(n, generator=g, dtype=torch.float64) > 0).double()
    return x, y


def vitorch_svgp(z, n):
    kernel = gp.RBF(LENGTH, VARIANCE)
    return gp.SVGP(kernel, z, gp.BernoulliProbit(), num_data=n, learn_inducing=False, jitter=JITTER / VARIANCE)


def freeze(module):
    for p in module.parameters():
        p.requires_grad_(False)


def vitorch_cvi(x, y, z):
    model = vitorch_svgp(z, x.shape[0])
    freeze(model.kernel)

    def step():
        cvi.cvi_step(model, x, y, lr=1.0)

    def elbo():
        with torch.no_grad():
            return float(model.full_data_elbo(x, y))

    return step, elbo


def vitorch_adam(x, y, z):
    model = vitorch_svgp(z, x.shape[0])
    freeze(model.kernel)
    opt = torch.optim.Adam(model.variational_parameters(), lr=ADAM_LR)

    def step():
        opt.zero_grad(set_to_none=True)
        (-model.full_data_elbo(x, y)).backward()
        opt.step()

    def elbo():
        with torch.no_grad():
            return float(model.full_data_elbo(x, y))

    return step, elbo


def gpytorch_ngd(gpytorch, x, y, z):
    n = x.shape[0]

    class Model(gpytorch.models.ApproximateGP):
        def __init__(self):
            q = gpytorch.variational.NaturalVariationalDistribution(z.shape[0])
            strategy = gpytorch.variational.VariationalStrategy(
                self, z.clone(), q, learn_inducing_locations=False, jitter_val=JITTER
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    model, lik = Model().double(), gpytorch.likelihoods.BernoulliLikelihood().double()
    model.covar_module.base_kernel.lengthscale = LENGTH
    model.covar_module.outputscale = VARIANCE
    freeze(model.covar_module)
    model.train(), lik.train()
    mll = gpytorch.mlls.VariationalELBO(lik, model, num_data=n)
    opt = gpytorch.optim.NGD(model.variational_parameters(), num_data=n, lr=1.0)

    def step():
        opt.zero_grad(set_to_none=True)
        (-mll(model(x), y)).backward()
        opt.step()

    judge = vitorch_svgp(z, n)

    def elbo():
        # one yardstick for every method: vitorch's bound at GPyTorch's q (GPyTorch's own ELBO clamps
        # the probit's probabilities, which moves its value by ~1e-4 nats per datum at the same q)
        with torch.no_grad():
            q = model.variational_strategy.variational_distribution
            judge.set_q(FullRankNormal(q.mean, torch.linalg.cholesky(q.covariance_matrix)))
            return float(judge.full_data_elbo(x, y))

    return step, elbo


def race(step, elbo, target: float, max_steps: int):
    """Steps until ``elbo() >= target`` (None if never), median step time, final ELBO."""
    clock, times, reached = _harness._clock, [], None
    for i in range(max_steps):
        t0 = clock()
        step()
        times.append(clock() - t0)
        if reached is None and elbo() >= target:
            reached = i + 1
            if len(times) >= 5:
                break
    return reached, statistics.median(times[1:] if len(times) > 2 else times), elbo()


def run_case(n: int, m: int, gpytorch, why, max_ng: int, max_adam: int) -> None:
    x, y = make_data(n)
    z = gp.kmeans(x, m, generator=torch.Generator().manual_seed(1))
    step, elbo = vitorch_cvi(x, y, z)
    for _ in range(50):
        step()
    optimum = elbo()
    target = optimum - GAP
    v_steps, v_per, v_final = race(*vitorch_cvi(x, y, z), target, max_ng)
    base = {"N": n, "M": m, "target_elbo": target, "optimum_elbo": optimum, "clock": _harness.clock_name()}
    v_s = v_per * (v_steps or max_ng)
    common = dict(base, vitorch_steps=v_steps, vitorch_s_per_step=v_per, vitorch_final_elbo=v_final)
    case = f"bernoulli_N{n}_M{m}"
    if gpytorch is None:
        _harness.report("gp_cvi", f"{case}_vs_ngd", v_s, "gpytorch", None, skipped=why, **common)
    else:
        p_steps, p_per, p_final = race(*gpytorch_ngd(gpytorch, x, y, z), target, max_ng)
        p_s = p_per * p_steps if p_steps else None
        _harness.report("gp_cvi", f"{case}_vs_ngd", v_s, "gpytorch", p_s, metric="steps to ELBO* - 0.1",
                        vitorch=v_steps, peer_value=p_steps, peer_s_per_step=p_per, peer_final_elbo=p_final,
                        peer_method="NaturalVariationalDistribution + NGD(lr=1)", **common)  # fmt: skip
    a_steps, a_per, a_final = race(*vitorch_adam(x, y, z), target, max_adam)
    a_s = a_per * a_steps if a_steps else None
    _harness.report("gp_cvi", f"{case}_vs_adam", v_s, "torch", a_s, metric="steps to ELBO* - 0.1",
                    vitorch=v_steps, peer_value=a_steps, peer_s_per_step=a_per, peer_final_elbo=a_final,
                    peer_method=f"vitorch SVGP + torch.optim.Adam(lr={ADAM_LR}) on q", **common)  # fmt: skip


def main() -> None:
    p = _harness.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    _harness.setup(args)
    torch.set_default_dtype(torch.float64)
    gpytorch, why = _harness.try_import("gpytorch")
    if args.quick:
        run_case(300, 16, gpytorch, why, max_ng=20, max_adam=300)
    else:
        for n, m in ((2000, 64), (2000, 256), (10000, 128)):
            run_case(n, m, gpytorch, why, max_ng=50, max_adam=3000)


if __name__ == "__main__":
    main()
