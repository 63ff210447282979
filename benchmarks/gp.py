"""SVGP training speed and accuracy against GPyTorch on identical problems.

Both sides get the same synthetic data (``y = f(x) + noise``, ``x`` in 8-D), the
same initial hyperparameters (RBF with ARD lengthscales times an output scale,
Gaussian noise), the same inducing inputs (a random subset of the training
inputs, learnable), whitened full-rank (Cholesky) q(u) started at ``N(0, I)``,
the same jitter on ``K_mm`` (GPyTorch's float32 default, 1e-4), the same
minibatches in the same order, Adam with the same learning rate on every
parameter, the loss ``-ELBO / N`` on both, float32.  The two models train in
lockstep, one step each in alternation, so drifting machine load hits both alike;
the reported times are median seconds per training step (forward, backward,
Adam), ``ratio = gpytorch_s / vitorch_s`` (> 1: vitorch faster), plus the test
NLPD and RMSE of both after the same number of steps.

Cases: the headline N = 20,000, D = 8, M = 256, batch 1,024; M in {64, 512}
(per-step cost ``O(M^2 B + M^3)``); and N in {5,000, 10,000, 20,000} timed per
epoch (``N / B`` steps, so linear in N).  ``--quick`` runs tiny sizes.

Run: ``python benchmarks/gp.py [--quick] [--iters T] [--threads 2 | --threads 1 --cpu-time]``.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vitorch.models import gp  # noqa: E402

import _harness  # noqa: E402

JITTER = 1e-4  # GPyTorch's variational_cholesky_jitter for float32, used by both sides
NOISE0, LR = 0.1, 0.01


def make_data(n: int, d: int, n_test: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n + n_test, d, generator=g) * 4 - 2
    w = torch.linspace(1.5, 0.2, d)  # decaying relevance, so ARD matters
    f = torch.sin(x * w).sum(-1) + 0.5 * torch.cos(x[:, 0] * x[:, 1 % d])
    y = f + 0.2 * torch.randn(n + n_test, generator=g)
    y = (y - y[:n].mean()) / y[:n].std()
    return x[:n], y[:n], x[n:], y[n:]


def vitorch_model(z, d, n):
    kernel = gp.RBF(lengthscale=torch.ones(d), variance=1.0)  # = GPyTorch's ScaleKernel(RBFKernel)
    model = gp.SVGP(kernel, z, gp.GaussianLikelihood(noise=NOISE0), num_data=n, jitter=JITTER)
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = model((xb, yb)).loss  # -ELBO / N estimated on the batch, the library's per-datum convention
        loss.backward()
        opt.step()

    def evaluate(x, y):
        with torch.no_grad():
            mean, var = model.predict_y(x)
            return float(gp.gaussian_nlpd(y, mean, var)), float(gp.rmse(y, mean))

    return step, evaluate


def gpytorch_model(gpytorch, z, d, n):
    class Model(gpytorch.models.ApproximateGP):
        def __init__(self):
            q = gpytorch.variational.CholeskyVariationalDistribution(z.shape[0], mean_init_std=0.0)
            strategy = gpytorch.variational.VariationalStrategy(
                self, z.clone(), q, learn_inducing_locations=True, jitter_val=JITTER
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=d))

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    model, lik = Model(), gpytorch.likelihoods.GaussianLikelihood()
    model.covar_module.base_kernel.lengthscale = torch.ones(d)
    model.covar_module.outputscale = 1.0
    lik.noise = NOISE0
    model.train(), lik.train()
    mll = gpytorch.mlls.VariationalELBO(lik, model, num_data=n)
    opt = torch.optim.Adam([*model.parameters(), *lik.parameters()], lr=LR)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = -mll(model(xb), yb)
        loss.backward()
        opt.step()

    def evaluate(x, y):
        model.eval(), lik.eval()
        with torch.no_grad():
            pred = lik(model(x))
            mean, var = pred.mean, pred.variance
        model.train(), lik.train()
        return float(gp.gaussian_nlpd(y, mean, var)), float(gp.rmse(y, mean))

    return step, evaluate


def batches(n: int, b: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out, perm = [], torch.randperm(n, generator=g)
    while len(out) < steps:
        for i in range(0, n - b + 1, b):
            out.append(perm[i : i + b])
            if len(out) == steps:
                break
        perm = torch.randperm(n, generator=g)
    return out


def run_case(case: str, n: int, d: int, m: int, b: int, steps: int, gpytorch, why, per_epoch: bool = False):
    x, y, xt, yt = make_data(n, d, max(1000, n // 10))
    g = torch.Generator().manual_seed(1)
    z = x[torch.randperm(n, generator=g)[:m]].clone()
    idx = batches(n, b, steps, seed=2)
    v_step, v_eval = vitorch_model(z, d, n)
    p_step = p_eval = None
    if gpytorch is not None:
        p_step, p_eval = gpytorch_model(gpytorch, z, d, n)
    times = {"vitorch": [], "gpytorch": []}
    for i, ib in enumerate(idx):
        xb, yb = x[ib], y[ib]
        for name, step in (("vitorch", v_step), ("gpytorch", p_step)):
            if step is None:
                continue
            clock = _harness._clock  # the wall clock, or the thread's CPU time under --cpu-time
            t0 = clock()
            step(xb, yb)
            if i >= 2:  # the first steps include one-off allocation and caching
                times[name].append(clock() - t0)
    v_s = statistics.median(times["vitorch"])
    scale = n / b if per_epoch else 1.0  # an epoch is N / B steps
    unit = "s/epoch" if per_epoch else "s/step"
    extra = {"N": n, "D": d, "M": m, "batch": b, "steps": steps, "unit": unit, "clock": _harness.clock_name()}
    v_nlpd, v_rmse = v_eval(xt, yt)
    extra.update(vitorch_nlpd=v_nlpd, vitorch_rmse=v_rmse, vitorch_it_per_s=1.0 / v_s)
    if p_step is None:
        return _harness.report("gp", case, v_s * scale, "gpytorch", None, skipped=why, **extra)
    p_s = statistics.median(times["gpytorch"])
    p_nlpd, p_rmse = p_eval(xt, yt)
    extra.update(peer_nlpd=p_nlpd, peer_rmse=p_rmse, peer_it_per_s=1.0 / p_s)
    return _harness.report("gp", case, v_s * scale, "gpytorch", p_s * scale, **extra)


def main() -> None:
    p = _harness.parser(__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=None, help="training steps per case (default 300; quick 12)")
    args = p.parse_args()
    _harness.setup(args)
    torch.set_default_dtype(torch.float32)
    gpytorch, why = _harness.try_import("gpytorch")
    if args.quick:
        steps = args.iters or 12
        main_case, ms, ns, d, b = (2000, 32), (16, 64), (1000, 2000), 4, 128
    else:
        steps = args.iters or 300
        main_case, ms, ns, d, b = (20000, 256), (64, 512), (5000, 10000, 20000), 8, 1024
    n, m = main_case
    run_case(f"svgp_N{n}_D{d}_M{m}_B{b}", n, d, m, b, steps, gpytorch, why)
    for mm in ms:
        run_case(f"svgp_N{n}_D{d}_M{mm}_B{b}", n, d, mm, b, steps, gpytorch, why)
    for nn in ns:
        epoch_steps = max(3, math.ceil(nn / b)) + 2
        run_case(f"epoch_N{nn}_D{d}_M{m}_B{b}", nn, d, m, b, epoch_steps, gpytorch, why, per_epoch=True)


if __name__ == "__main__":
    main()
