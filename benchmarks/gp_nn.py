"""Nearest-neighbour GP (VNNGP) training speed and accuracy against GPyTorch's NNVariationalStrategy.

Both sides get the same model: inducing points = the training inputs in the same random order,
the same k, mean-field q(u) started at the prior mean with standard deviation 1e-2, a zero prior
mean, an RBF kernel times an output scale (same initial values), a Gaussian likelihood, the same
jitter (GPyTorch's default 1e-3, added to each neighbour block and conditional variance), Adam
with the same learning rate on every parameter, float32, and the same batches: each step GPyTorch
draws its batch of inducing indices (its own scheme: the first k points, then shuffled batches)
and vitorch trains on the very same indices (``model((idx, y[idx]))``: the likelihood term on
q(u_idx) and the KL estimated on those indices, as GPyTorch does with ``model(x=None)``).  Steps
alternate between the two, so machine load hits both alike.  Reported: median seconds per training
step (forward, backward, Adam) and ``ratio = gpytorch_s / vitorch_s`` (> 1: vitorch faster), the
test NLPD and RMSE of both after the same steps, and the one-off set-up time (neighbour search).

Cases: N = M in {1,000, 4,000, 10,000}, D = 2, k = 16, batch 256 (``--quick``: M = 500, few steps).
Neighbours: vitorch uses brute-force ``torch.cdist`` in chunks; GPyTorch uses scikit-learn
(faiss is not installed).

Run: ``python benchmarks/gp_nn.py [--quick] [--threads 1 --cpu-time]``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vitorch.models import gp  # noqa: E402
from vitorch.models.gp.nngp import NNGP  # noqa: E402

import _harness  # noqa: E402

JITTER, LR, NOISE0, LENGTH0, K, BATCH = 1e-3, 0.01, 0.1, 0.3, 16, 256


def make_data(n: int, n_test: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n + n_test, 2, generator=g) * 4 - 2
    f = torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1]) + 0.5 * x[:, 0]
    y = f + 0.1 * torch.randn(n + n_test, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


def vitorch_model(x, y):
    kernel = gp.RBF(lengthscale=LENGTH0, variance=1.0)
    model = NNGP(kernel, x, gp.GaussianLikelihood(NOISE0), num_data=x.shape[0], k=K, jitter=JITTER)
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(idx):
        opt.zero_grad(set_to_none=True)
        model((idx, y[idx])).loss.backward()
        opt.step()

    def evaluate(xt, yt):
        with torch.no_grad():
            mean, var = model.predict_y(xt)
            return float(gp.gaussian_nlpd(yt, mean, var)), float(gp.rmse(yt, mean))

    return step, evaluate


def gpytorch_model(gpytorch, x, y):
    n = x.shape[0]

    class Model(gpytorch.models.ApproximateGP):
        def __init__(self):
            q = gpytorch.variational.MeanFieldVariationalDistribution(n, mean_init_std=0.0)
            strategy = gpytorch.variational.NNVariationalStrategy(
                self, x.clone(), q, k=K, training_batch_size=BATCH, jitter_val=JITTER
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    model, lik = Model(), gpytorch.likelihoods.GaussianLikelihood()
    model.covar_module.base_kernel.lengthscale = LENGTH0
    model.covar_module.outputscale = 1.0
    lik.noise = NOISE0
    model.train(), lik.train()
    mll = gpytorch.mlls.VariationalELBO(lik, model, num_data=n)
    opt = torch.optim.Adam([*model.parameters(), *lik.parameters()], lr=LR)
    strategy = model.variational_strategy

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(None)  # GPyTorch's recommended VNNGP training call: a batch of inducing indices
        idx = strategy.current_training_indices
        (-mll(out, y[idx])).backward()
        opt.step()
        return idx

    def evaluate(xt, yt):
        model.eval(), lik.eval()
        with torch.no_grad():
            pred = lik(model(xt))
            mean, var = pred.mean, pred.variance
        model.train(), lik.train()
        return float(gp.gaussian_nlpd(yt, mean, var)), float(gp.rmse(yt, mean))

    return step, evaluate


def run_case(m: int, steps: int, gpytorch, why) -> dict:
    x, y, xt, yt = make_data(m, 2000)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(1))
    x, y = x[perm], y[perm]  # the order defines both sides' Vecchia conditioning sets
    clock = _harness._clock
    t0 = clock()
    v_step, v_eval = vitorch_model(x, y)
    v_setup = clock() - t0
    extra = {"N": m, "M": m, "D": 2, "k": K, "batch": BATCH, "steps": steps, "unit": "s/step"}
    extra["vitorch_setup_s"] = v_setup
    times = {"vitorch": [], "gpytorch": []}
    if gpytorch is None:
        for _ in range(steps):
            idx = torch.randperm(m)[:BATCH]
            t0 = clock()
            v_step(idx)
            times["vitorch"].append(clock() - t0)
        v_nlpd, v_rmse = v_eval(xt, yt)
        v_s = statistics.median(times["vitorch"][2:])
        return _harness.report("gp_nn", f"vnngp_M{m}_k{K}", v_s, "gpytorch", None, skipped=why,
                               vitorch_nlpd=v_nlpd, vitorch_rmse=v_rmse, **extra)  # fmt: skip
    t0 = clock()
    p_step, p_eval = gpytorch_model(gpytorch, x, y)
    extra["peer_setup_s"] = clock() - t0
    for i in range(steps):
        t0 = clock()
        idx = p_step()
        dt = clock() - t0
        t0 = clock()
        v_step(idx)
        if i >= 2:  # the first steps include one-off allocation and caching
            times["vitorch"].append(clock() - t0)
            times["gpytorch"].append(dt)
    v_s, p_s = statistics.median(times["vitorch"]), statistics.median(times["gpytorch"])
    v_nlpd, v_rmse = v_eval(xt, yt)
    p_nlpd, p_rmse = p_eval(xt, yt)
    extra.update(vitorch_nlpd=v_nlpd, vitorch_rmse=v_rmse, peer_nlpd=p_nlpd, peer_rmse=p_rmse)
    extra["clock"] = _harness.clock_name()
    return _harness.report("gp_nn", f"vnngp_M{m}_k{K}", v_s, "gpytorch", p_s, metric="test NLPD",
                           vitorch=v_nlpd, peer_value=p_nlpd, **extra)  # fmt: skip


def main() -> None:
    p = _harness.parser(__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=None, help="training steps per case (default 400; quick 12)")
    args = p.parse_args()
    _harness.setup(args)
    torch.set_default_dtype(torch.float32)
    gpytorch, why = _harness.try_import("gpytorch")
    sizes = (500,) if args.quick else (1000, 4000, 10000)
    steps = args.iters or (12 if args.quick else 400)
    for m in sizes:
        run_case(m, steps, gpytorch, why)


if __name__ == "__main__":
    main()
