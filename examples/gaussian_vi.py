"""Gaussian VI without a learning rate: FB-GVI and Pathfinder on a skewed 2-D posterior.

The target is the posterior of a 2-D Bayesian logistic regression (``w ~ N(0, 2^2 I)``,
10 seeded data points), skewed and correlated.  Two Gaussian fits:

* FB-GVI (Diao et al., 2023): forward-backward steps in the Bures-Wasserstein space on a
  ``FullRankNormal``, step ``h = 1 / beta`` with ``beta`` the potential's smoothness
  constant, moments of the potential by Gauss-Hermite quadrature (exact to rounding in 2-D)
  and, for comparison, by Monte Carlo with 32 draws per step;
* Pathfinder (Zhang et al., 2022): normal approximations along an L-BFGS path, the best
  by its ELBO estimate.

The log evidence ``log Z`` comes from a fine grid, so every fit's KL divergence
``KL(q || p) = log Z - ELBO`` is exact up to the grid's error.  The figure shows the
target's density, the fitted ellipses (1 and 2 standard deviations), the FB-GVI means
along the way and the Pathfinder path; the second panel shows the KL along the iterations.

    python examples/gaussian_vi.py [--quick] [--out outputs/gaussian_vi]

The last line of output is a JSON object of headline metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import torch
from torch.nn.functional import logsigmoid

import vitorch as vt
from vitorch.gvi import FBGVI, pathfinder, quadrature_moments

PRIOR_SD = 2.0


def make_target(n: int = 10):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, generator=g) * torch.tensor([1.0, 0.6]) + torch.tensor([0.5, 0.0])
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([2.0, -1.0])), generator=g)

    def log_prob(w):
        logits = w @ x.T
        lik = (y * logsigmoid(logits) + (1 - y) * logsigmoid(-logits)).sum(-1)
        return lik - 0.5 * w.pow(2).sum(-1) / PRIOR_SD**2 - math.log(2 * math.pi * PRIOR_SD**2)

    beta = 1 / PRIOR_SD**2 + torch.linalg.eigvalsh(x.T @ x / 4).max().item()
    return log_prob, beta


def grid(log_prob, lo=-8.0, hi=14.0, n=600):
    axis = torch.linspace(lo, hi, n)
    w1, w2 = torch.meshgrid(axis, axis, indexing="xy")
    lp = log_prob(torch.stack([w1, w2], -1).reshape(-1, 2)).reshape(n, n)
    cell = (axis[1] - axis[0]) ** 2
    return w1, w2, lp, (torch.logsumexp(lp.flatten(), 0) + cell.log()).item()


def ellipse(q, k: float):
    t = torch.linspace(0, 2 * math.pi, 200)
    circle = torch.stack([t.cos(), t.sin()], -1)
    return q.loc + k * circle @ q.scale_tril.detach().T


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", default="outputs/gaussian_vi", help="where figures go")
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = 60 if args.quick else 400

    log_prob, beta = make_target()
    w1, w2, lp, log_z = grid(log_prob)
    exact = quadrature_moments(log_prob, degree=48)
    start = vt.FullRankNormal(torch.tensor([-2.0, 3.0]), 0.5 * torch.eye(2))
    fb = FBGVI(step_size=1 / beta, moments=exact).run(start, steps)
    gen = torch.Generator().manual_seed(1)
    fb_mc = FBGVI(log_prob, step_size=1 / beta, num_samples=32, generator=gen).run(start, steps)
    pf = pathfinder(log_prob, start.loc, num_elbo_draws=50, num_draws=500, generator=gen)

    def kl(q):
        return log_z - (q.entropy() - exact(q).energy).item()

    kl_fb, kl_mc, kl_pf = kl(fb.q), kl(fb_mc.q), kl(pf.q)
    print(f"log Z (grid) = {log_z:.4f}")
    print(f"FB-GVI, quadrature moments, {steps} steps: KL(q || p) = {kl_fb:.4f}")
    print(f"FB-GVI, 32 Monte Carlo draws per step:      KL(q || p) = {kl_mc:.4f}")
    print(
        f"Pathfinder, iterate {pf.best} of {pf.path.shape[0] - 1}:      KL(q || p) = {kl_pf:.4f}, k-hat {pf.khat:.2f}"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    ax.contourf(w1, w2, (lp - lp.max()).exp(), levels=12, cmap="Greys")
    for q, color, label in (
        (fb.q, "C0", "FB-GVI (quadrature)"),
        (fb_mc.q, "C2", "FB-GVI (MC, 32)"),
        (pf.q, "C3", "Pathfinder"),
    ):
        for k in (1.0, 2.0):
            e = ellipse(q, k)
            ax.plot(e[:, 0], e[:, 1], color=color, label=label if k == 1.0 else None)
    ax.plot(fb.locs[:, 0], fb.locs[:, 1], ".", color="C0", ms=3, alpha=0.6)
    ax.plot(pf.path[:, 0], pf.path[:, 1], "o-", color="C3", ms=3, lw=1, label="L-BFGS path")
    ax.plot(*pf.path[pf.best], "*", color="C3", ms=14)
    lo, hi = fb.q.loc - 4 * fb.q.stddev, fb.q.loc + 4 * fb.q.stddev
    ax.set(xlabel="w1", ylabel="w2", xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), title="target density and Gaussian fits")
    ax.legend(loc="upper right", fontsize=8)
    ax2.plot(log_z - fb.elbo, label="FB-GVI (quadrature): KL")
    # Pathfinder's per-iterate values are 50-draw Monte Carlo estimates: they can dip below 0.
    its = torch.arange(1, pf.elbo.shape[0] + 1)
    ax2.plot(its, log_z - pf.elbo, "o-", label="Pathfinder: KL estimate per iterate")
    ax2.set_yscale("symlog", linthresh=1e-2)
    ax2.set(xlabel="iteration", ylabel="KL(q || p)", title="KL divergence along the iterations")
    ax2.legend()
    title = "FB-GVI and Pathfinder on a 2-D logistic-regression posterior"
    fig.suptitle(title + (" (quick smoke run)" if args.quick else ""))
    fig.tight_layout()
    path = out_dir / "gaussian_vi.png"
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")
    metrics = {
        "log_z": round(log_z, 4),
        "kl_fbgvi_quadrature": round(kl_fb, 5),
        "kl_fbgvi_monte_carlo": round(kl_mc, 5),
        "kl_pathfinder": round(kl_pf, 5),
        "pathfinder_khat": round(pf.khat.item(), 3),
        "pathfinder_iterations": pf.path.shape[0] - 1,
        "fbgvi_steps": steps,
    }
    if args.quick:
        metrics["quick_smoke_run_not_converged"] = True
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
