"""Sparse GP regression: a 1-D picture, then minibatch SVGP on 100,000 points.

Part 1 fits Titsias' collapsed bound (SGPR) with inducing inputs chosen by greedy
variance selection and then learned, plots the predictive mean +- 2 sd with the
data and the inducing inputs, and compares the bound with the exact GP evidence.
Part 2 trains a minibatch SVGP (Hensman et al., 2013) on a large synthetic set
and reports test RMSE and NLPD.  Both train through ``vt.fit``: each model's
``forward((x, y))`` returns the bound per datum, ``loss = -ELBO / N``.

Run: ``python examples/gp_regression.py [--quick] [--out DIR]``; the last line
printed is a JSON object of headline metrics.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import vitorch as vt  # noqa: E402
from vitorch.models import gp  # noqa: E402


def truth(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) + 0.3 * torch.sin(3 * x)


def one_d(args, out: Path) -> dict:
    torch.set_default_dtype(torch.float64)
    n, m, steps = (120, 10, 80) if args.quick else (300, 15, 300)
    x = torch.sort(torch.rand(n) * 10).values.unsqueeze(-1)
    x = x[(x[:, 0] < 4) | (x[:, 0] > 5.5)]  # a gap, where the predictive spread should widen
    y = truth(x[:, 0]) + 0.2 * torch.randn(len(x))
    kernel = gp.RBF(lengthscale=1.0, variance=1.0)
    z0 = gp.greedy_variance(x, m, kernel)
    model = gp.SGPR(kernel, z0, noise=0.1)
    # the collapsed bound couples all the data: one batch of all N points per step
    vt.fit(model, (x, y), steps=steps, batch_size=len(x), lr=0.05, seed=0, progress=False)
    xs = torch.linspace(-0.5, 10.5, 400).unsqueeze(-1)
    with torch.no_grad():
        bound = float(model.full_data_elbo(x, y))
        exact = float(gp.ExactGP(model.kernel, noise=float(model.noise)).log_marginal_likelihood(x, y))
        mean, var = model.predict_y(x, y, xs)
    sd = var.sqrt()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(xs[:, 0], mean - 2 * sd, mean + 2 * sd, alpha=0.25, label="mean ± 2 sd (y)")
    ax.plot(xs[:, 0], mean, lw=2, label="predictive mean")
    ax.plot(xs[:, 0], truth(xs[:, 0]), "k--", lw=1, label="truth")
    ax.scatter(x[:, 0], y, s=6, c="k", alpha=0.5, label="data")
    zz = model.inducing.detach()[:, 0]
    ax.scatter(zz, torch.full_like(zz, float(mean.min() - 2 * sd.max())), marker="^", c="C3", label="inducing")
    title = f"SGPR, M = {m}: bound {bound:.1f} vs exact log evidence {exact:.1f}"
    ax.set_title(title + (" (quick smoke run)" if args.quick else ""))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize=7, ncol=5, frameon=False)
    fig.tight_layout()
    fig.savefig(out / "sgpr_1d.png", dpi=120)
    plt.close(fig)
    return {"sgpr_elbo": bound, "exact_log_evidence": exact, "sgpr_gap": exact - bound}


def big(args) -> dict:
    torch.set_default_dtype(torch.float32)
    n, n_test, d = (5_000, 1_000, 3) if args.quick else (100_000, 10_000, 3)
    m, batch, epochs, lr = (32, 256, 5, 0.03) if args.quick else (128, 1024, 8, 0.01)
    x = torch.rand(n + n_test, d) * 4 - 2
    f = torch.sin(2 * x[:, 0]) * torch.cos(x[:, 1]) + 0.5 * x[:, 2]
    y = f + 0.1 * torch.randn(n + n_test)
    x, y, xt, yt = x[:n], y[:n], x[n:], y[n:]
    z = gp.kmeans(x[torch.randperm(n)[: 20 * m]], m)  # k-means on a subsample: cheap and well spread
    model = gp.SVGP(gp.RBF(lengthscale=torch.ones(d)), z, gp.GaussianLikelihood(noise=0.1), num_data=n)
    history = vt.fit(model, (x, y), epochs=epochs, batch_size=batch, drop_last=True, lr=lr, seed=0)
    steps = len(history.steps)
    # the training rate from the steps' own clock: fit's one-off set-up is not a training step
    seconds = (history.steps[-1]["time"] - history.steps[0]["time"]) * steps / max(1, steps - 1)
    print(f"SVGP N={n} M={m}: final loss (-ELBO/N on the last batch) {history.steps[-1]['loss']:.3f}")
    with torch.no_grad():
        mean, var = model.predict_y(xt)
        rmse, nlpd = float(gp.rmse(yt, mean)), float(gp.gaussian_nlpd(yt, mean, var))
    # the best achievable with the true function: noise 0.1 -> RMSE 0.1, NLPD 0.5 log(2 pi e 0.01)
    print(f"SVGP on N={n}: test RMSE {rmse:.4f}, NLPD {nlpd:.4f} ({steps} steps, {steps / seconds:.1f} it/s)")
    return {
        "svgp_N": n,
        "svgp_M": m,
        "svgp_test_rmse": rmse,
        "svgp_test_nlpd": nlpd,
        "oracle_nlpd": 0.5 * math.log(2 * math.pi * math.e * 0.01),
        "svgp_it_per_s": steps / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--out", type=Path, default=Path("outputs") / Path(__file__).stem)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    metrics = one_d(args, args.out)
    metrics.update(big(args))
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
