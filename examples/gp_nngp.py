"""A fine-scale 2-D field with a nearest-neighbour GP (every training input an inducing point)
beside an SVGP with a few hundred inducing points.

The field varies on a scale of a few hundredths of the square, so a sparse GP needs thousands
of inducing points to resolve it; an SVGP's step costs ``O(M^2 B + M^3)`` and stops at a few
hundred.  The variational nearest-neighbour GP (Wu, Pleiss & Cunningham, 2022) takes the
training inputs themselves as its ``M = N`` inducing points, and each value conditions only on
its ``k = 16`` nearest ones, so a step costs ``O(B k^3)`` whatever ``M`` is.  Both models train
with Adam on the same batches for the same number of epochs; the NNGP's batches are indices
into its inducing points (``model((idx, y[idx]))``).  Each NNGP ``q(u_j)`` moves only when
``j`` is in the batch, so its mean-field q needs many epochs.  The figure shows the test NLPD
during training, the true field, both predictive means and the NNGP's predictive standard deviation.

Run: ``python examples/gp_nngp.py [--quick] [--out DIR]``; the last line printed is a JSON object
of headline metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vitorch.models import gp  # noqa: E402
from vitorch.models.gp.nngp import NNGP  # noqa: E402

NOISE = 0.1


def field(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(25 * x[:, 0]) * torch.cos(20 * x[:, 1]) + 0.5 * torch.sin(40 * (x[:, 0] + x[:, 1]))


def scores(model, xt, yt) -> dict:
    with torch.no_grad():
        mean, var = model.predict_y(xt)
    return {"rmse": float(gp.rmse(yt, mean)), "nlpd": float(gp.gaussian_nlpd(yt, mean, var))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--out", type=Path, default=Path("outputs") / Path(__file__).stem)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    n, m_svgp, epochs, batch = (1_500, 64, 3, 256) if args.quick else (5_000, 256, 60, 256)
    x = torch.rand(n + 2_000, 2)
    y = field(x) + NOISE**0.5 * torch.randn(len(x))
    x, y, xt, yt = x[:n], y[:n], x[n:], y[n:]

    t0 = time.perf_counter()
    # the training inputs in random order are the inducing points (the order sets the prior's neighbours);
    # Matern-3/2: rougher than the RBF, so the neighbour blocks stay well conditioned in float32
    nngp = NNGP(gp.Matern32(lengthscale=0.1), x, gp.GaussianLikelihood(noise=NOISE), num_data=n, k=16, jitter=1e-4)
    setup_s = time.perf_counter() - t0
    z = gp.kmeans(x, m_svgp, generator=torch.Generator().manual_seed(0))
    svgp = gp.SVGP(gp.Matern32(lengthscale=0.1), z, gp.GaussianLikelihood(noise=NOISE), num_data=n, jitter=1e-4)
    # each q(u_j) of the NNGP moves only when j is in the batch, about once an epoch: a larger step for q
    nn_opt = torch.optim.Adam(
        [{"params": nngp.variational_parameters(), "lr": 0.05}, {"params": nngp.hyperparameters(), "lr": 0.01}]
    )
    sv_opt = torch.optim.Adam(svgp.parameters(), lr=0.01)
    curves = {"NNGP": [], "SVGP": []}
    seconds = {"NNGP": 0.0, "SVGP": 0.0}
    steps = 0
    g = torch.Generator().manual_seed(1)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(n, generator=g).split(batch):
            for name, model, opt, data in (("NNGP", nngp, nn_opt, idx), ("SVGP", svgp, sv_opt, x[idx])):
                t0 = time.perf_counter()
                opt.zero_grad()
                model((data, y[idx])).loss.backward()  # the NNGP takes indices (Z = X), the SVGP inputs
                opt.step()
                seconds[name] += time.perf_counter() - t0
            steps += 1
        if epoch % max(1, epochs // 10) == 0 or epoch == epochs:
            for name, model in (("NNGP", nngp), ("SVGP", svgp)):
                curves[name].append((epoch, scores(model, xt, yt)["nlpd"]))

    nn_scores, sv_scores = scores(nngp, xt, yt), scores(svgp, xt, yt)
    print(f"NNGP  M = {n:6d}, k = 16: test RMSE {nn_scores['rmse']:.3f}, NLPD {nn_scores['nlpd']:.3f}")
    print(f"SVGP  M = {m_svgp:6d}:         test RMSE {sv_scores['rmse']:.3f}, NLPD {sv_scores['nlpd']:.3f}")

    g = torch.linspace(0, 1, 120)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        nn_mean, nn_var = nngp.predict(grid)
        sv_mean, _ = svgp.predict(grid)
    panels = [
        (field(grid), "true field"),
        (nn_mean, f"NNGP mean (M = {n}, k = 16)"),
        (sv_mean, f"SVGP mean (M = {m_svgp})"),
        (nn_var.sqrt(), "NNGP latent sd (scale clipped at its 99th percentile)"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.2))
    for name, curve in curves.items():
        axes[0].plot(*zip(*curve), marker="o", label=f"{name} (M = {n if name == 'NNGP' else m_svgp})")
    axes[0].set_xlabel("epoch"), axes[0].set_ylabel("test NLPD")
    axes[0].set_title("test NLPD while training", fontsize=9)
    axes[0].legend(fontsize=8)
    for ax, (img, title) in zip(axes[1:], panels):
        # a few test points whose neighbours nearly coincide get a large sd: clip the scale at the 99th percentile
        lims = {"vmin": 0.0, "vmax": float(img.quantile(0.99))} if "sd" in title else {"vmin": -1.6, "vmax": 1.6}
        im = ax.imshow(img.reshape(120, 120), origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r", **lims)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    suffix = " (quick smoke run)" if args.quick else ""
    fig.suptitle(f"Test NLPD: NNGP {nn_scores['nlpd']:.3f}, SVGP {sv_scores['nlpd']:.3f} after {epochs} epochs{suffix}")
    fig.tight_layout()
    fig.savefig(args.out / "nngp_field.png", dpi=110)
    plt.close(fig)
    metrics = {
        "N": n,
        "nngp_M": n,
        "nngp_k": 16,
        "svgp_M": m_svgp,
        "epochs": epochs,
        "nngp_test_rmse": nn_scores["rmse"],
        "nngp_test_nlpd": nn_scores["nlpd"],
        "svgp_test_rmse": sv_scores["rmse"],
        "svgp_test_nlpd": sv_scores["nlpd"],
        "nngp_setup_s": setup_s,
        "nngp_s_per_step": seconds["NNGP"] / steps,
        "svgp_s_per_step": seconds["SVGP"] / steps,
        "oracle_nlpd": 0.5 * float(torch.log(torch.tensor(2 * torch.pi * torch.e * NOISE))),
    }
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
