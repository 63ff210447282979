"""Eight schools end to end: declare a model with named sites, fit three automatic guides, compare with NUTS.

The SAT-coaching experiments of Rubin (1981): school ``j`` reports an effect ``y_j`` with a
known standard error ``sigma_j``.  The hierarchical model, in its non-centred form
(``theta_j = mu + tau * eta_j``), is

    mu ~ N(0, 5^2),  tau ~ HalfCauchy(5),  eta_j ~ N(0, 1),  y_j ~ N(mu + tau eta_j, sigma_j^2).

1. ``Model`` with sites ``mu`` (real), ``tau`` (positive) and ``eta`` (8 reals): vitorch
   builds the unconstrained space (``log tau``) and its Jacobian.
2. Three ``AutoGuide`` s, each trained by ``vt.fit`` through ``VI`` with no data set:
   mean-field (``"diag"``), full-rank (``"full"``, sticking-the-landing gradients) and a
   flow (``"flow"``: affine couplings started at the identity); the Laplace approximation is printed as a baseline.
3. A reference posterior: a NUTS run with Pyro when it is installed (the plot says how
   long), else a Pareto-smoothed importance-sampling reference with the full-rank guide
   as proposal (its k-hat is printed; below 0.7 it is trustworthy).
4. Figures: each guide's posterior intervals of mu, tau and theta against the reference,
   and tau's marginal; the full-rank guide's summary table is printed.

    python examples/eight_schools.py [--quick] [--out outputs/eight_schools] [--threads 1]

The last line of output is a JSON object of headline metrics.

References: Rubin (1981), *Estimation in Parallel Randomized Experiments*; Gelman et al.,
*Bayesian Data Analysis* (3rd ed., 2013), sec. 5.5; Kucukelbir et al. (2017), ADVI;
Hoffman & Gelman (2014), NUTS.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch
from torch.distributions import HalfCauchy, Normal
from torch.distributions import constraints as C

import vitorch as vt
from vitorch.model import VI, AutoGuide, Model, Posterior, Site

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
SCALARS = ["mu", "tau"] + [f"theta[{j}]" for j in range(8)]


def log_joint(p):
    """``p["mu"] [*s]``, ``p["tau"] [*s]``, ``p["eta"] [*s, 8]`` -> ``log p(y, mu, tau, eta) [*s]``."""
    mu, tau, eta = p["mu"], p["tau"], p["eta"]
    theta = mu.unsqueeze(-1) + tau.unsqueeze(-1) * eta
    prior = Normal(0.0, 5.0).log_prob(mu) + HalfCauchy(5.0).log_prob(tau) + Normal(0.0, 1.0).log_prob(eta).sum(-1)
    return prior + Normal(theta, SIGMA).log_prob(Y).sum(-1)


def scalars(draws: dict) -> torch.Tensor:
    """``[S, 10]``: mu, tau and the eight school effects theta."""
    theta = draws["mu"].unsqueeze(-1) + draws["tau"].unsqueeze(-1) * draws["eta"]
    return torch.cat([draws["mu"].unsqueeze(-1), draws["tau"].unsqueeze(-1), theta], -1)


def nuts_reference(warmup: int, samples: int, seed: int):
    """Draws ``[samples, 10]`` from Pyro's NUTS and a label saying what they are, or ``None`` without Pyro."""
    try:
        import pyro
        import pyro.distributions as dist
        from pyro.infer import MCMC, NUTS
    except ImportError:
        return None

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu + tau * eta, SIGMA), obs=Y)

    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=warmup, num_chains=1, disable_progbar=True)
    mcmc.run()
    draws = {k: v.detach() for k, v in mcmc.get_samples().items()}
    n_eff = min(float(v["n_eff"].min()) for v in mcmc.diagnostics().values() if isinstance(v, dict) and "n_eff" in v)
    label = f"NUTS (Pyro, 1 chain, {warmup} warm-up + {samples} draws, min ESS {n_eff:.0f})"
    return scalars(draws), label


def psis_reference(model: Model, q, num_samples: int):
    post = Posterior(model, q, num_samples)
    draws = post.resample(num_samples, generator=torch.Generator().manual_seed(0))
    label = f"PSIS reference (full-rank proposal, {num_samples} draws, k-hat {post.khat.item():.2f})"
    return scalars(draws), label


def fit(model: Model, kind: str, steps: int, particles: int, estimator, seed: int):
    torch.manual_seed(seed)
    guide = AutoGuide(model, kind)
    t0 = time.perf_counter()
    history = VI(model, guide, particles, estimator=estimator).fit(steps=steps, progress=False, seed=seed)
    seconds = time.perf_counter() - t0
    elbo = sum(r["bound"] for r in history.steps[-100:]) / len(history.steps[-100:])
    return guide, seconds, elbo


def compare(draws: torch.Tensor, ref: torch.Tensor) -> dict:
    """Largest |mean error| in reference sds and the median sd ratio, over the 10 scalars."""
    ref_sd = ref.std(0)
    err = ((draws.mean(0) - ref.mean(0)).abs() / ref_sd).max().item()
    ratio = (draws.std(0) / ref_sd).median().item()
    return {"max_mean_error_sd": round(err, 3), "median_sd_ratio": round(ratio, 3)}


def plot(out_dir: pathlib.Path, results: dict, ref: torch.Tensor, ref_label: str, quick: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the figures (pip install vitorch[examples])")
        return
    smoke = " (quick smoke run)" if quick else ""
    colors = {"reference": "black", "diag": "tab:blue", "full": "tab:orange", "flow": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = {"reference": ref, **{k: v["draws"] for k, v in results.items()}}
    for i, (name, d) in enumerate(series.items()):
        lo, mid, hi = (torch.quantile(d, torch.tensor([p]), dim=0)[0] for p in (0.05, 0.5, 0.95))
        x = torch.arange(len(SCALARS)) + (i - 1.5) * 0.18
        label = ref_label if name == "reference" else f"{name} guide"
        ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", ms=3, color=colors[name], label=label, capsize=2)
    ax.set_xticks(range(len(SCALARS)), SCALARS, rotation=30)
    ax.set_ylabel("posterior median and 90% interval")
    ax.set_title("Eight schools (non-centred): automatic guides against the reference" + smoke)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "intervals.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = torch.linspace(0, 25, 60)
    ax.hist(ref[:, 1].clamp_max(25), bins=bins, density=True, color="0.8", label=ref_label)
    for name, v in results.items():
        tau = v["draws"][:, 1].clamp_max(25)
        ax.hist(tau, bins=bins, density=True, histtype="step", color=colors[name], label=name)
    ax.set_title("Group scale tau" + smoke)
    ax.set_xlabel("tau (values above 25 shown at 25)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "tau.png", dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", default="outputs/eight_schools", help="where figures go")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per guide")
    p.add_argument("-K", "--particles", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for a model this small)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (200 if args.quick else 3000)
    num_samples = 1000 if args.quick else 10_000

    model = Model(log_joint, sites={"mu": Site(), "tau": Site(constraint=C.positive), "eta": Site(shape=(8,))})
    plans = {"diag": vt.estimators.reparam, "full": vt.estimators.stl, "flow": vt.estimators.stl}
    results = {}
    for kind, estimator in plans.items():
        guide, seconds, elbo = fit(model, kind, steps, args.particles, estimator, args.seed)
        post = Posterior(model, guide(), num_samples)
        results[kind] = {"guide": guide, "post": post, "draws": scalars(post), "seconds": seconds, "elbo": elbo}
        print(f"{kind:>5}: {steps} steps in {seconds:.1f} s, ELBO {elbo:.3f}, k-hat {post.khat.item():.2f}")
    laplace = Posterior(model, AutoGuide(model, "laplace")(), num_samples)
    print(f"laplace: k-hat {laplace.khat.item():.2f} (a Gaussian at the mode of the unconstrained density)")

    reference = nuts_reference(200 if args.quick else 1000, 300 if args.quick else 4000, args.seed)
    if reference is None:
        reference = psis_reference(model, results["full"]["guide"](), 2000 if args.quick else 100_000)
    ref, ref_label = reference
    print(f"reference: {ref_label}")

    print("\nfull-rank guide, summary (mean, sd, quantiles over q's draws; importance ESS and k-hat):")
    print(results["full"]["post"].summary())
    plot(out_dir, results, ref, ref_label, args.quick)

    metrics = {"example": "eight_schools", "steps": steps, "reference": ref_label}
    for kind, r in results.items():
        metrics[kind] = {
            **compare(r["draws"], ref),
            "elbo": round(r["elbo"], 3),
            "khat": round(r["post"].khat.item(), 3),
            "seconds": round(r["seconds"], 2),
        }
    metrics["laplace"] = {**compare(scalars(laplace), ref), "khat": round(laplace.khat.item(), 3)}
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
