"""Particle methods: SVGD step time against Pyro and NumPyro, and coin sampling against tuned SVGD.

Speed.  One SVGD step (score by autograd, RBF kernel with the median bandwidth, the move
``x + lr phi``) on the same target, at the same number of particles ``n`` and dimension
``D``, float32:

* vitorch: ``vitorch.particles.SVGD(log_prob, x0, lr).step()``;
* Pyro: ``pyro.infer.SVGD(model, RBFSteinKernel(), SGD, n, 0, mode="multivariate")``
  (``multivariate`` is Liu & Wang's SVGD; Pyro's default ``univariate`` is another method),
  the model a flat ``ImproperUniform`` site plus ``pyro.factor`` of the same ``log_prob``;
* NumPyro: ``numpyro.contrib.einstein.SVGD`` (SteinVI with an ``AutoDelta`` guide,
  ``RBFKernel``, SGD), its ``update`` under ``jax.jit``, the same density written in jax.

Pyro's kernel takes a median bandwidth per coordinate and NumPyro's its own heuristic; the
work per step is otherwise the same.  ``ratio = peer_s / vitorch_s`` from interleaved
medians.  Pyro is timed by the clock of ``--cpu-time`` (thread CPU time with
``--threads 1``); XLA runs its work on its own threads, which thread CPU time does not see,
so NumPyro lines are timed by the wall clock for both sides (``"clock"`` says which), with
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.

Accuracy.  Coin SVGD (no learning rate) against SVGD with plain steps at each learning rate
of a small grid, ``n = 100`` particles, the same steps and start, float64, on

* ``gaussian``: ``N(m, S)`` in ``D = 10``, ``S`` with eigenvalues from 0.1 to 10 (exact moments);
* ``logistic``: the 6-D Bayesian logistic regression of ``tests/particles`` (breast-cancer
  subset), against the NumPyro NUTS reference ``tests/particles/data/logistic_nuts.json``.

Per run: ``mean_err`` the largest |mean error| in target sds, ``sd_err`` the largest
|sd / target sd - 1|, ``ksd`` the IMQ kernelized Stein discrepancy (V-statistic, square
root, ``l = 1``) of the particles.

    python benchmarks/particles.py [--quick] [--threads 1 --cpu-time] [--steps 1000]

References:
    Liu & Wang, *Stein Variational Gradient Descent* (NeurIPS 2016); Sharrock & Nemeth,
    *Coin Sampling* (ICML 2023); Bingham et al., *Pyro* (JMLR 2019); Phan et al., *NumPyro* (2019).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vitorch.diagnostics import ksd  # noqa: E402
from vitorch.particles import SVGD, CoinSVGD  # noqa: E402

from _harness import clock_name, interleaved_medians, parser, report, setup, try_import  # noqa: E402

REFERENCE = HERE.parent / "tests" / "particles" / "data" / "logistic_nuts.json"
LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


# ----- targets: each gives a torch log_prob [n, D] -> [n], a jax twin, and its exact moments ---------------


def gaussian_target(D: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    Qm, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    eig = torch.logspace(-1, 1, D, dtype=torch.float64)
    cov = (Qm * eig) @ Qm.T
    mean = torch.linspace(-1, 1, D, dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    prec, mean_t = prec.to(dtype), mean.to(dtype)

    def log_prob(z):
        d = z - mean_t
        return -0.5 * ((d @ prec) * d).sum(-1)

    def jax_log_prob(z):
        import jax.numpy as jnp

        d = z - jnp.asarray(mean_t.numpy())
        return -0.5 * jnp.sum((d @ jnp.asarray(prec.numpy())) * d, -1)

    return log_prob, jax_log_prob, mean, cov.diagonal().sqrt()


def logistic_target(dtype=torch.float64):
    ref = json.loads(REFERENCE.read_text())
    x, y = torch.tensor(ref["x"], dtype=dtype), torch.tensor(ref["y"], dtype=dtype)

    def log_prob(theta):
        w, b = theta[..., :-1], theta[..., -1]
        logits = w @ x.T + b[..., None]
        return -0.5 * w.pow(2).sum(-1) - 0.5 * (b / 5.0).pow(2) + (y * logits - F.softplus(logits)).sum(-1)

    def jax_log_prob(theta):
        import jax
        import jax.numpy as jnp

        w, b = theta[..., :-1], theta[..., -1]
        logits = w @ jnp.asarray(x.numpy()).T + b[..., None]
        lik = (jnp.asarray(y.numpy()) * logits - jax.nn.softplus(logits)).sum(-1)
        return -0.5 * (w**2).sum(-1) - 0.5 * (b / 5.0) ** 2 + lik

    return log_prob, jax_log_prob, torch.tensor(ref["mean"]), torch.tensor(ref["sd"])


# ----- speed ------------------------------------------------------------------------------------------------


def pyro_stepper(log_prob, x0: torch.Tensor, lr: float):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVGD as PyroSVGD
    from pyro.infer import RBFSteinKernel

    n, D = x0.shape

    class Flat(dist.ImproperUniform):
        def sample(self, sample_shape=()):  # Pyro's init_to_sample reads the starting particles here
            return x0.clone()

    def model():
        z = pyro.sample("z", Flat(dist.constraints.real, (), (D,)))
        pyro.factor("log_prob", log_prob(z))

    pyro.clear_param_store()
    svgd = PyroSVGD(model, RBFSteinKernel(), pyro.optim.SGD({"lr": lr}), n, 0, mode="multivariate")
    return svgd.step


def numpyro_stepper(jax_log_prob, x0: torch.Tensor, lr: float):
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.einstein import SVGD as NumPyroSVGD
    from numpyro.contrib.einstein import RBFKernel

    n, D = x0.shape

    class Flat(dist.ImproperUniform):
        def sample(self, key, sample_shape=()):  # a prototype for init_to_uniform; the start is its own
            return jax.numpy.zeros(sample_shape + self.batch_shape + self.event_shape)

    def model():
        z = numpyro.sample("z", Flat(dist.constraints.real, (), (D,)))
        numpyro.factor("log_prob", jax_log_prob(z))

    svgd = NumPyroSVGD(model, numpyro.optim.SGD(lr), RBFKernel(), num_stein_particles=n)
    state = svgd.init(jax.random.PRNGKey(0))
    update = jax.jit(svgd.update)
    box = [state]

    def step():
        box[0], loss = update(box[0])
        jax.block_until_ready(loss)

    return step


def speed(args, cases) -> None:
    import time

    pyro_mod, pyro_reason = try_import("pyro")
    numpyro_mod, numpyro_reason = try_import("numpyro")
    repeats = args.repeats or (5 if args.quick else 30)
    for name, (log_prob, jax_log_prob, D), n in cases:
        x0 = torch.randn(n, D, dtype=torch.float32)
        case = f"svgd_step/{name}/n={n}/D={D}"
        ours = SVGD(log_prob, x0, lr=1e-3)
        if pyro_mod is None:
            report("particles", case, float("nan"), "pyro", None, skipped=pyro_reason)
        else:
            theirs = pyro_stepper(log_prob, x0, 1e-3)
            t = interleaved_medians({"vitorch": ours.step, "pyro": theirs}, repeats)
            report("particles", case, t["vitorch"], "pyro", t["pyro"], clock=clock_name(), n=n, D=D)
        if numpyro_mod is None:
            report("particles", case, float("nan"), "numpyro", None, skipped=numpyro_reason)
            continue
        try:
            theirs = numpyro_stepper(jax_log_prob, x0, 1e-3)
        except Exception as err:  # a peer that will not build is reported, not faked
            report("particles", case, float("nan"), "numpyro", None, skipped=f"{type(err).__name__}: {err}")
            continue
        wall = {}
        for k, fn in (("vitorch", ours.step), ("numpyro", theirs)):
            for _ in range(2):
                fn()
            wall[k] = []
        for _ in range(2 * repeats):  # the wall clock sees other jobs: twice the repeats
            for k, fn in (("vitorch", ours.step), ("numpyro", theirs)):
                t0 = time.perf_counter()
                fn()
                wall[k].append(time.perf_counter() - t0)
        med = {k: sorted(v)[len(v) // 2] for k, v in wall.items()}
        report("particles", case, med["vitorch"], "numpyro", med["numpyro"], clock="wall", n=n, D=D)


# ----- accuracy ---------------------------------------------------------------------------------------------


def accuracy(args) -> None:
    import time

    steps = args.steps or (100 if args.quick else 1000)
    n = 100
    targets = {
        "gaussian": gaussian_target(10),
        "logistic": logistic_target(),
    }
    for name, (log_prob, _, mean, sd) in targets.items():
        D = mean.shape[0]
        x0 = torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        runs = [("coin", None)] + [("svgd", lr) for lr in LR_GRID]
        results = []
        for method, lr in runs:
            sampler = CoinSVGD(log_prob, x0) if method == "coin" else SVGD(log_prob, x0, lr=lr)
            t0 = time.perf_counter()
            try:
                q = sampler.run(steps)
            except ValueError as err:
                line = {"bench": "particles", "case": f"accuracy/{name}", "method": method, "lr": lr}
                line.update({"steps": steps, "n": n, "D": D, "diverged": str(err)[:120]})
                print(json.dumps(line), flush=True)
                continue
            seconds = time.perf_counter() - t0
            mean_err = float(((q.mean - mean) / sd).abs().max())
            sd_err = float((q.stddev / sd - 1).abs().max())
            disc = math.sqrt(max(float(ksd(q, log_prob, bandwidth=1.0, u_statistic=False)), 0.0))
            line = {"bench": "particles", "case": f"accuracy/{name}", "method": method, "lr": lr, "steps": steps}
            line.update({"n": n, "D": D, "mean_err": mean_err, "sd_err": sd_err, "ksd": disc, "seconds": seconds})
            print(json.dumps(line), flush=True)
            results.append(line)
        svgd_runs = [r for r in results if r["method"] == "svgd"]
        coin = [r for r in results if r["method"] == "coin"]
        if svgd_runs and coin:
            best = min(svgd_runs, key=lambda r: r["mean_err"] + r["sd_err"])
            for metric in ("mean_err", "sd_err", "ksd"):
                line = {"bench": "particles", "case": f"accuracy/{name}/coin_vs_tuned_svgd", "metric": metric}
                line.update({"vitorch": coin[0][metric], "peer": f"vitorch SVGD lr={best['lr']}"})
                line.update({"peer_value": best[metric], "steps": steps, "n": n, "D": D})
                print(json.dumps(line), flush=True)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="steps of each accuracy run (default 1000; quick 100)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    args = p.parse_args()
    setup(args)
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    torch.set_default_dtype(torch.float32)
    lg = logistic_target(torch.float32)
    gauss = gaussian_target(20, torch.float32)
    sizes = (50,) if args.quick else (100, 300)
    cases = [(name, (t[0], t[1], d), n) for name, t, d in (("gaussian", gauss, 20), ("logistic", lg, 6)) for n in sizes]
    if not args.skip_speed:
        speed(args, cases)
    torch.set_default_dtype(torch.float64)
    if not args.skip_accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
