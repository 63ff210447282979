"""MixFlows on a banana and Neal's funnel (Xu, Chen & Campbell, 2023).

A MixFlow mixes the iterates ``T^0, ..., T^{N-1}`` of a map ``T`` pushed forward from a
reference ``q0``.  We follow the paper's recipe: fit a diagonal Gaussian ``q0`` by the ELBO,
then wrap it in `vitorch.MixFlow` (uncorrected leapfrog with Laplace momentum, deterministic
momentum refreshment, pseudo-time shift) for growing ``N``, and read off

* the ELBO from the paper's unbiased estimator (``q.elbo``), which is a lower bound on
  ``log Z = 0`` (both targets are normalized) and should approach it as ``N`` grows;
* the density of the position ``x``: the family's own density lives on the augmented state
  ``(x, rho, u)``, and ``x``'s marginal ``E_{rho, u}[q_N(x, rho, u) / m(rho)]`` is estimated on a
  grid by drawing ``(rho, u)`` from their reference laws; and a histogram of samples of ``x``
  (``q.position(q.sample(...))``).

Targets: banana ``x1 ~ N(0, 4)``, ``x2 | x1 ~ N(0.3 (x1^2 - 4), 1)``; funnel
``x1 ~ N(0, 2.25)``, ``x2 | x1 ~ N(0, e^x1)``.

    python examples/mixflows_2d.py [--quick] [--out outputs/mixflows_2d]

Writes ``mixflows_2d.png`` (target density, MixFlow density of x, histogram of samples, ELBO against N) and prints
one JSON line of metrics last.

References:
    Xu, Chen & Campbell, MixFlows: principled variational inference via mixed flows (ICML 2023).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

import vitorch as vt
from vitorch.families import DiagNormal, MixFlow


def _normal_lp(x, m, s):
    s = torch.as_tensor(s, dtype=x.dtype)
    return -0.5 * ((x - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)


def banana(x):
    return _normal_lp(x[..., 0], 0.0, 2.0) + _normal_lp(x[..., 1], 0.3 * (x[..., 0] ** 2 - 4), 1.0)


def funnel(x):
    return _normal_lp(x[..., 0], 0.0, 1.5) + _normal_lp(x[..., 1], 0.0, torch.exp(x[..., 0] / 2))


TARGETS = {
    # name: (log density, exact mean, exact variance, plotting box)
    "banana": (banana, [0.0, 0.0], [4.0, 1 + 2 * 0.09 * 16], (-6.0, 6.0, -4.0, 8.0)),
    "funnel": (funnel, [0.0, 0.0], [2.25, math.exp(1.125)], (-5.0, 5.0, -6.0, 6.0)),
}


def fit_reference(lp, steps: int) -> DiagNormal:
    """Mean-field Gaussian q0 by the reparameterized ELBO (the paper's reference)."""
    loc = torch.zeros(2, requires_grad=True)
    raw = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([loc, raw], lr=0.02)
    for _ in range(steps):
        out = vt.loss(lp, DiagNormal(loc, torch.nn.functional.softplus(raw) + 1e-3), 32)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return DiagNormal(loc.detach(), torch.nn.functional.softplus(raw.detach()) + 1e-3)


@torch.no_grad()
def marginal_density(q: MixFlow, box, n_grid: int, m: int) -> torch.Tensor:
    """The MixFlow's density of ``x`` on a grid, ``q_N(x) = E_{rho ~ m, u ~ U}[q_N(x, rho, u) / m(rho)]``,
    estimated with ``m`` draws of ``(rho, u)`` per point (unbiased for the density itself)."""
    x0, x1, y0, y1 = box
    gx, gy = torch.linspace(x0, x1, n_grid), torch.linspace(y0, y1, n_grid)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    lap = torch.distributions.Laplace(0.0, 1.0)
    rho = lap.sample((m, len(pts), 2))
    u = torch.rand(m, len(pts), 1)
    s = torch.cat([pts.expand(m, -1, -1), rho, u], -1)
    log_w = q.log_prob(s) - lap.log_prob(rho).sum(-1)
    return (log_w.logsumexp(0) - math.log(m)).exp().reshape(n_grid, n_grid)


def plot(results, samples, densities, out_dir: pathlib.Path, quick: bool) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TARGETS), 4, figsize=(13, 3.2 * len(TARGETS)))
    for row, (name, (lp, _, _, box)) in enumerate(TARGETS.items()):
        x0, x1, y0, y1 = box
        gx, gy = torch.linspace(x0, x1, 200), torch.linspace(y0, y1, 200)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1)
        dens = lp(grid).exp()
        ax = axes[row, 0]
        ax.imshow(dens.T.numpy(), origin="lower", extent=box, aspect="auto", cmap="viridis")
        ax.set_title(f"{name}: target density", fontsize=9)
        x = samples[name]
        big = max(results[name]["elbo"], key=int)
        ax = axes[row, 1]
        ax.imshow(densities[name].T.numpy(), origin="lower", extent=box, aspect="auto", cmap="viridis")
        ax.contour(gx.numpy(), gy.numpy(), dens.T.numpy(), levels=5, colors="white", linewidths=0.6)
        ax.set_title(f"MixFlow N={big}: density of x (target contours)", fontsize=9)
        ax = axes[row, 2]
        ax.hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=50, range=[[x0, x1], [y0, y1]], density=True, cmap="viridis")
        ax.contour(gx.numpy(), gy.numpy(), dens.T.numpy(), levels=5, colors="white", linewidths=0.6)
        ax.set_title(f"MixFlow N={big}: histogram of samples", fontsize=9)
        ax = axes[row, 3]
        ns = sorted(results[name]["elbo"], key=int)
        means = [results[name]["elbo"][n] for n in ns]
        ses = [results[name]["elbo_se"][n] for n in ns]
        ax.errorbar([int(n) for n in ns], means, yerr=[2 * s for s in ses], marker="o", capsize=3)
        ax.axhline(0.0, color="k", lw=0.8, ls="--", label="log Z")
        ax.set_xscale("log")
        ax.set_xlabel("N (iterates mixed)")
        ax.set_ylabel("ELBO (+-2 se)")
        ax.legend(fontsize=8)
        ax.set_title(f"{name}: ELBO against N", fontsize=9)
    title = "MixFlows (Xu, Chen & Campbell, 2023)" + (" (quick smoke run)" if quick else "")
    fig.suptitle(title)
    fig.tight_layout()
    path = out_dir / "mixflows_2d.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", default="outputs/mixflows_2d", help="where the figure goes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    q0_steps = 60 if args.quick else 600
    ns = (1, 5, 15) if args.quick else (1, 10, 50, 200)
    leapfrog, step = (5, 0.1) if args.quick else (10, 0.05)
    draws = 100 if args.quick else 2000
    t_start = time.perf_counter()
    results, samples, densities = {}, {}, {}
    for name, (lp, mean, var, _) in TARGETS.items():
        q0 = fit_reference(lp, q0_steps)
        res = {"elbo": {}, "elbo_se": {}}
        for n in ns:
            q = MixFlow(lp, q0, num_steps=n, step_size=step, num_leapfrog=leapfrog)
            e = q.elbo(draws)
            res["elbo"][str(n)] = round(e.mean().item(), 4)
            res["elbo_se"][str(n)] = round(e.std().item() / math.sqrt(draws), 4)
            print(
                f"{name}: N={n:4d}  ELBO {e.mean().item():8.4f} +- {e.std().item() / math.sqrt(draws):.4f}", flush=True
            )
        x = q.position(q.sample((2 * draws,)))
        samples[name] = x
        densities[name] = marginal_density(q, TARGETS[name][3], *((30, 8) if args.quick else (40, 16)))
        err_mean = ((x.mean(0) - torch.tensor(mean)).abs() / torch.tensor(var).sqrt()).max().item()
        err_var = (x.var(0) / torch.tensor(var) - 1).abs().max().item()
        res["mean_err_sd"], res["var_rel_err"] = round(err_mean, 4), round(err_var, 4)
        results[name] = res
    path = plot(results, samples, densities, out_dir, args.quick)
    print(f"wrote {path}")
    metrics = {
        "log_z": 0.0,
        "elbo": {k: v["elbo"] for k, v in results.items()},
        "mean_err_sd": {k: v["mean_err_sd"] for k, v in results.items()},
        "var_rel_err": {k: v["var_rel_err"] for k, v in results.items()},
        "step_size": step,
        "num_leapfrog": leapfrog,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if args.quick:
        metrics["quick_smoke_run_not_converged"] = True
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
