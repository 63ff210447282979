"""Nile river flow (1871-1970), local-level model: Kalman MLE, the smoother's band, and a VI posterior's band.

    y_t = mu_t + eps_t,  eps_t ~ N(0, s2_eps);   mu_{t+1} = mu_t + eta_t,  eta_t ~ N(0, s2_eta)

1. Maximum likelihood of (s2_eps, s2_eta) through the exact diffuse Kalman log-likelihood
   (Durbin & Koopman, 2012, ch. 2 and 7): ssm.KalmanSSM trained by vt.fit, checked against
   statsmodels' UnobservedComponents.
2. The RTS smoother's 95% band for mu_t at the MLE.
3. A variational posterior (Gaussian Markov chain family, ELBO with sticking-the-landing
   gradients: ssm.SSMVI trained by vt.fit) fitted to the same model, whose band should cover
   the smoother's.

Usage: python examples/ssm_nile.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from statsmodels.datasets import nile  # noqa: E402
from statsmodels.tsa.statespace.structural import UnobservedComponents  # noqa: E402

import vitorch as vt  # noqa: E402
from vitorch.models import ssm  # noqa: E402


def local_level(s2_eps: torch.Tensor, s2_eta: torch.Tensor, **init) -> ssm.LinearGaussianSSM:
    one = torch.ones(1, 1)
    return ssm.LinearGaussianSSM(one, s2_eta.reshape(1, 1), one, s2_eps.reshape(1, 1), torch.zeros(1), **init)


def cosine(steps: int):
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)


def fit_mle(y: torch.Tensor, steps: int, lr: float) -> tuple[torch.Tensor, float]:
    """Maximize the diffuse Kalman log-likelihood over the two variances with vt.fit (Adam).

    ``KalmanSSM`` learns each variance through its log Cholesky factor, so Adam's steps are
    relative changes; the one series is the data set ``y[None]`` with batch size 1.
    """
    one, v0 = torch.ones(1, 1), y.var() / 2
    model = ssm.KalmanSSM(
        one, v0 * one, one, v0 * one, torch.zeros(1), diffuse=True, learn=("transition_cov", "emission_cov")
    )
    vt.fit(model, y[None], steps=steps, batch_size=1, lr=lr, scheduler=cosine(steps), seed=0, progress=False)
    exact = model.ssm()
    var = torch.stack([exact.emission_cov[0, 0], exact.transition_cov[0, 0]]).detach()
    return var, model.log_prob(y).item()


def fit_vi(
    y: torch.Tensor, var: torch.Tensor, steps: int, particles: int
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Fit a Gaussian Markov chain q to the local-level posterior on standardized data with vt.fit.

    Returns q's mean and standard deviation per year (original units), the final ELBO
    estimate, and log Z of the (proper, nearly flat) prior used for VI.
    """
    loc, scale = y.mean(), y.std()
    ys = (y - loc) / scale
    # VI needs a proper prior: x_1 ~ N(0, 1e4) in standardized units is flat to ~1e-4 against the data.
    model = local_level(var[0] / scale**2, var[1] / scale**2, init_cov=torch.full((1, 1), 1e4))
    guide = ssm.MarkovGaussianGuide(ys.shape[0], 1, init_scale=0.5)
    vi = ssm.SSMVI(model, guide, particles, estimator=vt.estimators.stl)
    vt.fit(vi, ys[None], steps=steps, batch_size=1, lr=0.03, scheduler=cosine(steps), seed=0, progress=False)
    with torch.no_grad():
        # q's marginal means and sds are exact for a Gaussian chain (no Monte Carlo).
        mean = vi.predict(ys[None])[0, :, 0] * scale + loc
        q = guide()
        sd = q.marginal_covariances[:, 0, 0].sqrt() * scale
        z, log_q = q.rsample_and_log_prob((4000,))
        elbo = (model.log_joint(z, ys) - log_q).mean().item()
    return mean, sd, elbo, model.log_prob(ys).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 60 MLE and 60 VI steps")
    p.add_argument("--out", default=os.path.join("outputs", "ssm_nile"))
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)

    # statsmodels' submodules, not statsmodels.api, whose import costs seconds of every run.
    data = nile.load_pandas().data
    years, y = data["year"].to_numpy(), torch.tensor(data["volume"].to_numpy())[:, None]

    var, loglik = fit_mle(y, *((60, 0.2) if args.quick else (600, 0.1)))
    ref = UnobservedComponents(y.numpy().ravel(), "local level").fit(disp=False)
    exact_ref = UnobservedComponents(y.numpy().ravel(), "local level", use_exact_diffuse=True)
    model = local_level(*var, diffuse=True)
    means, covs = model.smooth(y)
    sd = covs[..., 0, 0].sqrt()

    steps = 60 if args.quick else 2000
    vi_mean, vi_sd, elbo, log_z = fit_vi(y, var, steps, particles=8)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(years, y[:, 0], "k.", ms=4, label="annual flow (1e8 m$^3$)")
    ax.plot(years, means[:, 0], color="C0", label="Kalman smoother (MLE)")
    ax.fill_between(
        years, means[:, 0] - 1.96 * sd, means[:, 0] + 1.96 * sd, color="C0", alpha=0.25, label="smoother 95%"
    )
    ax.plot(years, vi_mean, "--", color="C3", label="VI posterior mean")
    ax.plot(years, vi_mean - 1.96 * vi_sd, ":", color="C3", label="VI 95%")
    ax.plot(years, vi_mean + 1.96 * vi_sd, ":", color="C3")
    ax.set_xlabel("year")
    title = f"Nile local level: s2_eps={var[0]:.0f}, s2_eta={var[1]:.0f}, log-lik={loglik:.2f}"
    ax.set_title(title + (" (quick smoke run)" if args.quick else ""))
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ssm_nile.png"), dpi=120)

    metrics = {
        "loglik": loglik,
        "sigma2_eps": var[0].item(),
        "sigma2_eta": var[1].item(),
        "statsmodels_sigma2_eps": float(ref.params[0]),
        "statsmodels_sigma2_eta": float(ref.params[1]),
        "statsmodels_exact_diffuse_loglik_at_mle": float(exact_ref.loglike(var.numpy())),
        "vi_elbo": elbo,
        "vi_log_z": log_z,
        "vi_max_mean_error_in_sd": ((vi_mean - means[:, 0]).abs() / sd).max().item(),
        "vi_sd_ratio_range": [(vi_sd / sd).min().item(), (vi_sd / sd).max().item()],
    }
    print(f"MLE: sigma2_eps={var[0]:.1f} sigma2_eta={var[1]:.1f} log-lik={loglik:.3f}")
    print(f"statsmodels local level: sigma2_eps={ref.params[0]:.1f} sigma2_eta={ref.params[1]:.1f}")
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
