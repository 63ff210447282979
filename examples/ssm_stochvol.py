"""Stochastic volatility of US real GDP growth (statsmodels' macrodata, 1959Q2-2009Q3) with the DMM posterior.

    h_1 ~ N(mu, s^2 / (1 - phi^2)),   h_t = mu + phi (h_{t-1} - mu) + s eta_t,   r_t ~ N(0, exp(h_t))

r_t is quarterly log-growth of real GDP in percent, demeaned; h_t its log-variance.
The model's (mu, phi, s) and the structured amortized posterior q(h_t | h_{t-1}, r_{t:T})
(backward GRU + combiner; Krishnan, Shalit & Sontag, 2017) are learned jointly by
ascending IWAE with doubly-reparameterized guide gradients: ``ssm.SSMVI`` trained by ``vt.fit``.
The volatility band should show the "Great Moderation" (lower volatility after ~1984).

Usage: python examples/ssm_stochvol.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from statsmodels.datasets import macrodata  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributions import Independent, Normal  # noqa: E402

import vitorch as vt  # noqa: E402
from vitorch.models import ssm  # noqa: E402


class StochVol(nn.Module):
    """AR(1) log-variance with learnable mean, persistence (tanh) and volatility of volatility (softplus)."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(0.0))
        self.raw_phi = nn.Parameter(torch.tensor(1.5))  # phi = tanh(1.5) ~ 0.9
        self.raw_s = nn.Parameter(torch.tensor(-1.0))

    @property
    def phi(self):
        return torch.tanh(self.raw_phi)

    @property
    def s(self):
        return nn.functional.softplus(self.raw_s)

    def model(self) -> ssm.StateSpaceModel:
        init = lambda: Independent(Normal(self.mu.reshape(1), self.s / (1 - self.phi**2).sqrt()), 1)  # noqa: E731
        trans = lambda h, t: Independent(Normal(self.mu + self.phi * (h - self.mu), self.s), 1)  # noqa: E731
        emit = lambda h, t: Independent(Normal(torch.zeros_like(h), (0.5 * h).exp()), 1)  # noqa: E731
        return ssm.StateSpaceModel(init, trans, emit)

    def log_joint(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``log p(h, r)`` for paths ``h [K, B, T, 1]`` and returns ``r [B, T, 1]`` -> ``[K, B]``."""
        return self.model().log_joint(h, r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 training steps, fewer evaluation draws")
    p.add_argument("--out", default=os.path.join("outputs", "ssm_stochvol"))
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)

    # statsmodels' submodules, not statsmodels.api, whose import costs seconds of every run.
    data = macrodata.load_pandas().data
    gdp = data["realgdp"].to_numpy()
    dates = data["year"].to_numpy()[1:] + (data["quarter"].to_numpy()[1:] - 1) / 4
    r = 100 * np.diff(np.log(gdp))
    r = torch.tensor(r - r.mean())[:, None]  # [T, 1]

    sv = StochVol()
    guide = ssm.StructuredInferenceNetwork(1, 1, rnn_dim=24, embed=None)
    vi = ssm.SSMVI(sv, guide, 8, objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
    steps = 20 if args.quick else 2000
    eval_k, band_draws = (64, 500) if args.quick else (256, 2000)
    # One series: the data set is r[None] [1, T, 1], one sequence per batch.
    history = vt.fit(vi, r[None], steps=steps, batch_size=1, lr=0.01, seed=0, progress=False).column("bound")

    with torch.no_grad():
        out = ssm.SSMVI(sv, guide, eval_k, objective=vt.objectives.iwae)(r[None])
        h = guide(r).rsample((band_draws,))[..., 0]
        vol = (0.5 * h).exp()
        lo, med, hi = (vol.quantile(q, dim=0) for q in (0.05, 0.5, 0.95))

    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax0.plot(dates, r[:, 0], "k-", lw=0.8)
    ax0.set_ylabel("GDP growth (%, demeaned)")
    ax1.fill_between(dates, lo, hi, color="C0", alpha=0.3, label="90% posterior band")
    ax1.plot(dates, med, color="C0", label="posterior median of exp(h/2)")
    ax1.plot(dates, r[:, 0].abs(), "k.", ms=2, label="|r_t|")
    ax1.set_ylabel("volatility")
    ax1.set_xlabel("year")
    ax1.legend(fontsize=8)
    ax0.set_title(
        f"SV on US real GDP: phi={sv.phi.item():.2f}, s={sv.s.item():.2f}, IWAE_{eval_k}={out.bound[0].item():.1f}"
        + (" (quick smoke run)" if args.quick else "")
    )
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ssm_stochvol.png"), dpi=120)

    early, late = med[dates < 1984].mean().item(), med[dates >= 1984].mean().item()
    metrics = {
        "steps": steps,
        "iwae_8_last50": float(np.mean(history[-50:])),
        f"iwae_{eval_k}": out.bound[0].item(),
        "mu": sv.mu.item(),
        "phi": sv.phi.item(),
        "s": sv.s.item(),
        "vol_before_1984": early,
        "vol_after_1984": late,
    }
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
