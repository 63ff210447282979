"""SVGD and coin sampling on two 2-D targets: a banana and a two-component Gaussian mixture.

Both methods move ``n`` particles with the same Stein direction (Liu & Wang, 2016; RBF
kernel, median bandwidth); SVGD steps by a learning rate, coin sampling (Sharrock &
Nemeth, 2023) by a coin-betting rule with no learning rate.  Both targets have exact
moments:

* banana: ``x1 ~ N(0, 2^2)``, ``x2 | x1 ~ N(0.25 (x1^2 - 4), 1)``, so ``E x = 0``,
  ``Var x1 = 4`` and ``Var x2 = 2 (0.25)^2 2^4 + 1 = 3``;
* mixture: ``0.5 N((-2, 0), I) + 0.5 N((2, 0), I)`` (mean 0, ``Var x1 = 1 + 4 = 5``, ``Var x2 = 1``).

The particles start in a small ball away from the mass, ``N((0, -3), 0.5^2 I)``.  For each
run the script reports the largest |mean error| and |sd / true sd - 1| over the two
coordinates and the kernelized Stein discrepancy (IMQ, V-statistic, square root,
``l = 1``; Gorham & Mackey, 2017), which needs only the target's score.

    python examples/particles_2d.py [--quick] [--out outputs/particles_2d] [--steps 1500]

Writes ``particles.png``: the particles over the density contours, one panel per target
and method, and prints a final JSON line of headline metrics.

References:
    Liu & Wang, *Stein Variational Gradient Descent* (NeurIPS 2016);
    Sharrock & Nemeth, *Coin Sampling: Gradient-Based Bayesian Inference without Learning
    Rates* (ICML 2023); Gorham & Mackey, *Measuring Sample Quality with Kernels* (ICML 2017).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

from vitorch.diagnostics import ksd
from vitorch.particles import SVGD, CoinSVGD


def banana(z: torch.Tensor) -> torch.Tensor:
    """``[..., 2] -> [...]`` log-density (normalized)."""
    x1, x2 = z[..., 0], z[..., 1]
    return -(x1**2) / 8 - 0.5 * (x2 - 0.25 * (x1**2 - 4)) ** 2 - math.log(2 * math.pi * 2)


def mixture(z: torch.Tensor) -> torch.Tensor:
    """``[..., 2] -> [...]`` log-density (normalized)."""
    a = -0.5 * ((z - torch.tensor([-2.0, 0.0])) ** 2).sum(-1)
    b = -0.5 * ((z - torch.tensor([2.0, 0.0])) ** 2).sum(-1)
    return torch.logaddexp(a, b) - math.log(2) - math.log(2 * math.pi)


TARGETS = {
    "banana": (banana, torch.tensor([0.0, 0.0]), torch.tensor([2.0, math.sqrt(3.0)]), 0.2),
    "mixture": (mixture, torch.tensor([0.0, 0.0]), torch.tensor([math.sqrt(5.0), 1.0]), 0.1),
}


def plot(runs: dict, path: pathlib.Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TARGETS), 2, figsize=(8, 7.5))
    g = torch.linspace(-6, 6, 200)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1)
    for row, (name, (log_prob, *_)) in enumerate(TARGETS.items()):
        dens = log_prob(grid).exp()
        for col, method in enumerate(("svgd", "coin")):
            ax = axes[row, col]
            ax.contour(g, g, dens, levels=8, cmap="Blues")
            x = runs[name][method]["particles"]
            ax.scatter(x[:, 0], x[:, 1], s=6, c="tab:red")
            r = runs[name][method]
            label = f"SVGD (lr {r['lr']:.2g})" if method == "svgd" else "coin SVGD (no learning rate)"
            ax.set_title(f"{name}: {label}\nKSD {r['ksd']:.3f}, mean err {r['mean_err']:.2f} sd", fontsize=8)
            ax.set_xlim(-6, 6), ax.set_ylim(-6, 6), ax.set_aspect("equal")
    fig.suptitle("Particles over the target's contours" + (" (quick smoke run)" if quick else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run (few steps)")
    p.add_argument("--out", default="outputs/particles_2d", help="where the figure goes")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--particles", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    steps = args.steps or (100 if args.quick else 1500)
    n = args.particles or (60 if args.quick else 200)
    x0 = torch.tensor([0.0, -3.0]) + 0.5 * torch.randn(n, 2)
    runs, metrics = {}, {}
    for name, (log_prob, mean, sd, lr) in TARGETS.items():
        runs[name] = {}
        for method in ("svgd", "coin"):
            sampler = SVGD(log_prob, x0, lr=lr) if method == "svgd" else CoinSVGD(log_prob, x0)
            t0 = time.perf_counter()
            q = sampler.run(steps)
            seconds = time.perf_counter() - t0
            r = {
                "lr": lr if method == "svgd" else None,
                "mean_err": float(((q.mean - mean) / sd).abs().max()),
                "sd_err": float((q.stddev / sd - 1).abs().max()),
                "ksd": math.sqrt(max(float(ksd(q, log_prob, bandwidth=1.0, u_statistic=False)), 0.0)),
                "seconds": seconds,
            }
            print(json.dumps({"target": name, "method": method, "steps": steps, "n": n, **r}), flush=True)
            runs[name][method] = {**r, "particles": q.particles}
            for k in ("mean_err", "sd_err", "ksd"):
                metrics[f"{name}_{method}_{k}"] = round(r[k], 4)
    out = pathlib.Path(args.out)
    plot(runs, out / "particles.png", args.quick)
    print(json.dumps({**metrics, "steps": steps, "particles": n, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
