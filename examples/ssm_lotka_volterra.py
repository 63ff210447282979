"""Stochastic Lotka-Volterra SDE: latent path and rate parameters from sparse noisy observations.

Prey u and predators v (Ryder et al., 2018, sec. 5.1; Golightly & Wilkinson, 2011):

    alpha(x, theta) = [t1 u - t2 u v,  t2 u v - t3 v]
    beta(x, theta)  = [[t1 u + t2 u v, -t2 u v], [-t2 u v, t2 u v + t3 v]]

discretized by Euler-Maruyama with dt = 0.1 from x_0 = (100, 100), theta = (0.5, 0.0025, 0.3);
both species observed with N(0, 5^2) noise every time unit (simulated, seeded).  The posterior
q(log theta) q(x | log theta, y) - a full-rank Gaussian and Ryder et al.'s autoregressive
bridge over the whole path - is fitted by maximizing the ELBO: ``ssm.SSMVI`` trained by ``vt.fit``.

Usage: python examples/ssm_lotka_volterra.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import vitorch as vt  # noqa: E402
from vitorch.models import ssm  # noqa: E402

TRUE_THETA = (0.5, 0.0025, 0.3)


def drift(x, th):
    # Populations are floored at a small positive value so rates and the diffusion stay valid.
    u, v = x[..., 0].clamp_min(1e-3), x[..., 1].clamp_min(1e-3)
    t1, t2, t3 = th[..., 0], th[..., 1], th[..., 2]
    return torch.stack([t1 * u - t2 * u * v, t2 * u * v - t3 * v], -1)


def diffusion(x, th):
    u, v = x[..., 0].clamp_min(1e-3), x[..., 1].clamp_min(1e-3)
    t1, t2, t3 = th[..., 0], th[..., 1], th[..., 2]
    uv = t2 * u * v
    return torch.stack([torch.stack([t1 * u + uv, -uv], -1), torch.stack([-uv, uv + t3 * v], -1)], -2)


def complete_data_mle(sde: ssm.EulerMaruyamaSDE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Oracle reference: the MLE of theta given the *true* path (Euler likelihood, L-BFGS on log theta)."""
    u = torch.tensor(TRUE_THETA).log().requires_grad_()
    opt = torch.optim.LBFGS([u], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = -(sde.log_joint(torch.cat([u, x.flatten()]), y) - sde.theta_prior.log_prob(u))
        nll.backward()
        return nll

    opt.step(closure)
    return u.detach().exp()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter series and fewer steps")
    p.add_argument("--out", default=os.path.join("outputs", "ssm_lotka_volterra"))
    p.add_argument("--estimator", choices=("reparam", "stl"), default="reparam", help="ELBO gradient estimator")
    p.add_argument("--particles", type=int, default=4, help="K, particles per step")
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default 10 quick, 800 full)")
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)

    dt, horizon = 0.1, (8.0 if args.quick else 20.0)
    K = round(horizon / dt)
    obs_index = list(range(10, K + 1, 10))  # every time unit
    # Weakly informative prior on log rates, N((-1, -5, -1), 1.5^2) (true values -0.69, -5.99, -1.20):
    # each truth within one prior sd.  q(log theta) starts at the prior mean.
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.tensor([-1.0, -5.0, -1.0]), 1.5), 1)
    sde = ssm.EulerMaruyamaSDE(drift, diffusion, torch.tensor([100.0, 100.0]), dt, K, obs_index, 5.0, prior)
    x_true, y = sde.simulate(torch.tensor(TRUE_THETA), torch.Generator().manual_seed(2018))

    guide = ssm.SDEPosterior(sde, y, hidden=(48, 48), state_scale=100.0)
    estimator = getattr(vt.estimators, args.estimator)
    vi = ssm.SSMVI(sde, guide, args.particles, estimator=estimator)
    theta_params = [guide.theta_loc, guide.theta_off, guide.theta_diag]
    opt = torch.optim.Adam([{"params": theta_params, "lr": 0.03}, {"params": guide.step.parameters(), "lr": 3e-3}])
    steps = args.steps or (10 if args.quick else 800)
    cosine = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, steps)  # noqa: E731
    # One observed series: the data set is y[None] [1, J, 2], one sequence per batch.
    history = vt.fit(vi, y[None], optimizer=opt, scheduler=cosine, steps=steps, batch_size=1, seed=0, progress=False)
    history = history.column("bound")

    with torch.no_grad():
        z = guide().rsample((500,))
        u, paths = sde.split(z)
        theta = u.exp()
        lo, med, hi = (paths.quantile(q, dim=0) for q in (0.05, 0.5, 0.95))
        elbo = sum(history[-50:]) / len(history[-50:])

    t = torch.arange(1, K + 1) * dt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for i, (name, c) in enumerate((("prey", "C0"), ("predator", "C3"))):
        axes[0].fill_between(t, lo[:, i], hi[:, i], color=c, alpha=0.25, label=f"{name} 90% band")
        axes[0].plot(t, med[:, i], color=c, lw=1)
        axes[0].plot(t, x_true[:, i], "k--", lw=0.8)
        axes[0].plot(sde.obs_index * dt, y[:, i], "o", color=c, ms=4)
    axes[0].set_xlabel("time")
    axes[0].set_title(
        "posterior band (shaded), truth (dashed), observations (dots)" + (" (quick smoke run)" if args.quick else "")
    )
    axes[0].legend(fontsize=8)
    for i in range(3):
        axes[1].hist((theta[:, i] / TRUE_THETA[i]).numpy(), bins=30, alpha=0.5, label=f"theta{i + 1} / true")
    axes[1].axvline(1.0, color="k")
    axes[1].set_title("parameter posteriors (relative to truth)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ssm_lotka_volterra.png"), dpi=120)

    q05, q50, q95 = (theta.quantile(q, dim=0) for q in (0.05, 0.5, 0.95))
    oracle = complete_data_mle(sde, x_true, y)
    for i in range(3):
        print(
            f"theta{i + 1}: median {q50[i]:.4g}  90% [{q05[i]:.4g}, {q95[i]:.4g}]  true {TRUE_THETA[i]}"
            f"  (complete-data MLE {oracle[i]:.4g})"
        )
    inside = ((x_true >= lo) & (x_true <= hi)).double().mean().item()
    metrics = {
        "steps": steps,
        "estimator": args.estimator,
        "particles": args.particles,
        "num_grid_steps": K,
        "elbo_last50": elbo,
        "theta_median": q50.tolist(),
        "theta_q05": q05.tolist(),
        "theta_q95": q95.tolist(),
        "theta_true": list(TRUE_THETA),
        "theta_complete_data_mle": oracle.tolist(),
        "path_coverage_90": inside,
    }
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
