"""Structured VAE on pendulum videos: LDS prior + neural decoder, inference by Kalman smoothing of encoder potentials.

Each sequence is a swinging pendulum rendered as small grey images (16 x 16, a blurred bob, pixel
noise).  One generative model, a `DeepLDS` (a learnable linear dynamical system in 4 dimensions and an
MLP decoder to pixels), is trained twice with the same data, steps and optimizer:

* **SVAE** (Johnson et al., 2016; Zhao & Linderman, 2023): a per-frame encoder emits Gaussian potentials,
  combined with the LDS prior by the Kalman smoother; KL in closed form.
* **SVAE, masked training**: the same, trained with a random half of each sequence's frames dropped
  (their potentials and likelihood terms), the self-supervised scheme of Zhao & Linderman (2023) that
  makes the prior's dynamics carry the posterior between frames.
* **DMM guide** (Krishnan et al., 2017): `StructuredInferenceNetwork` (a backward GRU and a combiner)
  with the same generative model, through `SSMVI`; it reads every frame, so it has no masked variant.

Reported on held-out sequences: the ELBO per frame, and the error of predicting the last frames from
the first ones.  The SVAE forecasts by dropping the potentials of the frames it must predict (the
smoother then runs the prior forward); the DMM guide reads the observed prefix, and the prior runs on
from its last state.

Usage: python examples/svae_pendulum.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributions import Independent, Normal  # noqa: E402

import vitorch as vt  # noqa: E402
from vitorch.models import ssm  # noqa: E402

SIZE, STATE_DIM, HORIZON = 16, 4, 5


def render(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Frames ``[..., SIZE * SIZE]`` of a bob at angle ``theta [...]`` (pivot at the top centre)."""
    grid = torch.arange(SIZE, dtype=torch.float32)
    cx = (SIZE - 1) / 2 + 5.5 * torch.sin(theta)
    cy = 2.0 + 5.5 * torch.cos(theta)
    img = torch.exp(-((grid - cx[..., None, None]) ** 2 + (grid[:, None] - cy[..., None, None]) ** 2) / 2.0)
    img = img + 0.05 * torch.randn(img.shape, generator=gen)
    return img.reshape(*theta.shape, SIZE * SIZE)


def simulate(n: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` sequences of ``T`` frames: a lightly damped pendulum with small random forcing."""
    dt, steps_per_frame = 0.05, 4
    theta = (torch.rand(n, generator=gen) - 0.5) * 2.4
    omega = (torch.rand(n, generator=gen) - 0.5) * 2.0
    frames = []
    for _ in range(T):
        frames.append(theta.clone())
        for _ in range(steps_per_frame):
            omega = omega + dt * (-9.81 / 1.0 * torch.sin(theta) - 0.05 * omega) + 0.05 * torch.randn(n, generator=gen)
            theta = theta + dt * omega
    return render(torch.stack(frames, 1), gen)


class Decoder(nn.Module):
    """``x [..., T, D] -> Independent(Normal(mlp(x), sigma), 1)`` over the pixels."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(STATE_DIM, 64), nn.Tanh(), nn.Linear(64, SIZE * SIZE))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(0.2)))

    def forward(self, x):
        loc = self.net(x)
        return Independent(Normal(loc, self.log_sigma.exp().expand_as(loc)), 1)


class MaskedTraining(nn.Module):
    """Train an SVAE with a random half of each sequence's frames dropped (self-supervised, Zhao & Linderman, 2023).

    Dropped frames lose their potentials and likelihood terms, so the prior's dynamics must carry the
    posterior across them: the prior learns to predict.  Evaluation (``eval()``) sees every frame.
    """

    def __init__(self, svae: ssm.SVAE, drop: float = 0.5):
        super().__init__()
        self.svae, self.drop = svae, drop

    def forward(self, y):
        observed = torch.rand(y.shape[:2]) >= self.drop if self.training else None
        return self.svae(y if observed is None else (y, observed))


def make_model(seed: int) -> ssm.DeepLDS:
    torch.manual_seed(seed)
    return ssm.DeepLDS(ssm.LDSPrior(STATE_DIM), Decoder())


@torch.no_grad()
def dmm_forecast(vi: ssm.SSMVI, y: torch.Tensor, t0: int, samples: int = 16) -> torch.Tensor:
    """Mean frames ``[B, T, p]``: reconstructions of ``y[:, :t0]`` by the guide, then the prior from its last state."""
    x = vi.guide(y[:, :t0]).sample((samples,))  # [S, B, t0, D]
    future = vi.model.prior.step(x[..., -1, :], y.shape[1] - t0)
    return vi.model.decoder(torch.cat([x, future], -2)).mean.mean(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few sequences and steps (seconds)")
    p.add_argument("--out", default=os.path.join("outputs", "svae_pendulum"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    gen = torch.Generator().manual_seed(0)
    n_train, n_test, T, steps = (32, 16, 20, 15) if args.quick else (256, 64, 30, 1500)
    y_train, y_test = simulate(n_train, T, gen), simulate(n_test, T, gen)
    t0 = T - HORIZON

    def make_svae() -> ssm.SVAE:
        torch.manual_seed(1)
        encoder = ssm.GaussianPotentialEncoder(SIZE * SIZE, STATE_DIM, hidden=(64,))
        return ssm.SVAE(make_model(0), encoder)

    svae, svae_masked = make_svae(), make_svae()
    torch.manual_seed(1)
    embed = nn.Sequential(nn.Linear(SIZE * SIZE, 32), nn.Tanh())
    guide = ssm.StructuredInferenceNetwork(obs_dim=32, state_dim=STATE_DIM, rnn_dim=32, embed=embed)
    dmm = ssm.SSMVI(make_model(0), guide)  # the same generative model and initialization
    fit = {"steps": steps, "batch_size": 16, "lr": 3e-3, "progress": False, "seed": 0}
    hist_svae = vt.fit(svae, y_train, **fit)
    hist_masked = vt.fit(MaskedTraining(svae_masked), y_train, **fit)
    hist_dmm = vt.fit(dmm, y_train, **fit)

    with torch.no_grad():
        torch.manual_seed(2)
        svae.num_particles = svae_masked.num_particles = dmm.num_particles = 8
        elbo_svae = float(svae(y_test).bound.mean()) / T
        elbo_masked = float(svae_masked(y_test).bound.mean()) / T
        elbo_dmm = float(dmm(y_test).bound.mean()) / T
        observed = torch.ones(n_test, T, dtype=torch.bool)
        observed[:, t0:] = False
        pred_svae = svae.reconstruct(y_test, observed)  # [B, T, p]: reconstructions, then forecasts
        pred_masked = svae_masked.reconstruct(y_test, observed)
        pred_dmm = dmm_forecast(dmm, y_test, t0)
        truth = y_test[:, t0:]
        mse_svae = float((pred_svae[:, t0:] - truth).pow(2).mean())
        mse_masked = float((pred_masked[:, t0:] - truth).pow(2).mean())
        mse_dmm = float((pred_dmm[:, t0:] - truth).pow(2).mean())
        mse_mean_frame = float((y_train.mean((0, 1)) - truth).pow(2).mean())

    fig, axes = plt.subplots(5, HORIZON + 3, figsize=(1.4 * (HORIZON + 3), 7.8))
    rows = (("data", y_test[0]), ("SVAE", pred_svae), ("SVAE masked", pred_masked), ("DMM guide", pred_dmm))
    show = range(t0 - 3, T)
    for j, t in enumerate(show):
        axes[0, j].imshow(y_test[0, t].reshape(SIZE, SIZE), cmap="gray")
        axes[0, j].set_title(f"t={t}" + (" (given)" if t < t0 else ""), fontsize=7)
        for i, (_, pred) in enumerate(rows[1:], start=1):
            axes[i, j].imshow(pred[0, t].reshape(SIZE, SIZE), cmap="gray")
    for i, (name, _) in enumerate(rows):
        axes[i, 0].set_ylabel(name if i == 0 else f"{name}\nfit | forecast", fontsize=8)
    for ax in axes[:4].ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    gs = axes[4, 0].get_gridspec()
    for ax in axes[4]:
        ax.remove()
    curve = fig.add_subplot(gs[4, :])
    for name, hist in (("SVAE", hist_svae), ("SVAE masked (half the frames)", hist_masked), ("DMM guide", hist_dmm)):
        curve.plot([b / T for b in hist.column("bound")], label=name)
    curve.set_xlabel("step")
    curve.set_ylabel("train ELBO / frame")
    curve.legend(fontsize=8)
    title = (
        f"Pendulum, held-out ELBO/frame: SVAE {elbo_svae:.1f}, masked {elbo_masked:.1f}, DMM {elbo_dmm:.1f}; "
        f"{HORIZON}-frame forecast MSE x1e3: {1e3 * mse_svae:.2f}, {1e3 * mse_masked:.2f}, {1e3 * mse_dmm:.2f}"
    )
    fig.suptitle(title + (" (quick smoke run)" if args.quick else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "svae_pendulum.png"), dpi=110)

    metrics = {
        "steps": steps,
        "test_elbo_per_frame_svae": elbo_svae,
        "test_elbo_per_frame_svae_masked": elbo_masked,
        "test_elbo_per_frame_dmm": elbo_dmm,
        f"forecast_mse_{HORIZON}_frames_svae": mse_svae,
        f"forecast_mse_{HORIZON}_frames_svae_masked": mse_masked,
        f"forecast_mse_{HORIZON}_frames_dmm": mse_dmm,
        "forecast_mse_mean_frame": mse_mean_frame,
    }
    if args.quick:
        metrics["quick_smoke_run_not_converged"] = True
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
