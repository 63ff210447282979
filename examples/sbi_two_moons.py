"""Amortized neural posterior estimation on the two-moons simulator, checked three ways.

The two-moons task (Greenberg et al., 2019; sbibm, Lueckmann et al., 2021) has a
crescent-shaped, bimodal posterior: ``theta ~ U(-1, 1)^2``, ``a ~ U(-pi/2, pi/2)``,
``r ~ N(0.1, 0.01^2)`` and ``x = (r cos a + 0.25, r sin a) + (-|theta_1 + theta_2| / sqrt 2,
(-theta_1 + theta_2) / sqrt 2)``.  We simulate pairs from the prior, fit a conditional
neural spline flow ``q(theta | x)`` with `vitorch.sbi.NPE` (early stopping on a 10%
held-out split), and then

* draw from ``q(theta | x_o)`` at sbibm's observation 1 and compare with sbibm's
  reference posterior samples, by eye (``posterior.png``) and by C2ST (0.5 = the
  classifier cannot tell them apart);
* run simulation-based calibration (Talts et al., 2018) on fresh prior simulations: the
  rank of the true parameter among posterior draws must be uniform (``sbc.png``, with
  the chi-square p-values in the title);
* report the expected coverage of the 50% and 90% highest-density regions.

Without sbibm the script uses the same simulator written here, the observation
``x_o = (0, 0)`` and a rejection-ABC reference (many prior simulations, the closest
0.05% kept), and says so in its output.

    python examples/sbi_two_moons.py [--quick] [--out outputs/sbi_two_moons]

References:
    Papamakarios & Murray, *Fast epsilon-free inference of simulation models with Bayesian
    conditional density estimation* (NeurIPS 2016).
    Lueckmann et al., *Benchmarking simulation-based inference* (AISTATS 2021).
    Talts et al., *Validating Bayesian inference algorithms with simulation-based calibration* (2018).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

from vitorch.sbi import NPE, box_uniform, c2st, expected_coverage, sbc_ranks, sbc_test, simulate


def two_moons(theta: torch.Tensor) -> torch.Tensor:
    """sbibm's two-moons simulator, batched: ``theta [n, 2] -> x [n, 2]``."""
    n = theta.shape[0]
    a = (torch.rand(n) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n)
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], -1)
    shift = torch.stack([-(theta[:, 0] + theta[:, 1]).abs(), -theta[:, 0] + theta[:, 1]], -1) / math.sqrt(2)
    return p + shift


def problem(n_reference: int, quick: bool):
    """Prior, simulator, observation, reference samples and where they came from."""
    try:
        import sbibm

        task = sbibm.get_task("two_moons")
        reference = task.get_reference_posterior_samples(num_observation=1)[:n_reference]
        return task.get_prior_dist(), task.get_simulator(), task.get_observation(1)[0], reference, "sbibm"
    except Exception:  # sbibm missing or broken: fall back to our own simulator and rejection ABC
        prior = box_uniform([-1.0, -1.0], [1.0, 1.0])
        x_o = torch.zeros(2)
        n_abc = 400_000 if quick else 4_000_000
        theta, x = simulate(prior, two_moons, n_abc, chunk_size=400_000, seed=0)
        keep = (x - x_o).norm(dim=-1).argsort()[: max(n_abc // 2000, 200)]
        return prior, two_moons, x_o, theta[keep][:n_reference], f"rejection ABC ({n_abc} simulations, closest 0.05%)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few simulations and epochs")
    ap.add_argument("--out", default="outputs/sbi_two_moons")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    n_sims, epochs, n_c2st = (1000, 15, 300) if args.quick else (10_000, 300, 2000)
    n_sbc, n_post = (100, 49) if args.quick else (500, 99)
    prior, simulator, x_o, reference, source = problem(n_c2st, args.quick)
    print(f"reference posterior: {source}")

    theta, x = simulate(prior, simulator, n_sims, seed=1)
    hidden = (32, 32) if args.quick else (50, 50)
    npe = NPE(prior, (2,), flow="nsf", transforms=3 if args.quick else 5, hidden=hidden, activation=torch.nn.ELU)
    t0 = time.perf_counter()
    history = npe.fit(theta, x, batch_size=200, lr=1e-3, max_epochs=epochs, patience=20, seed=2)
    train_s = time.perf_counter() - t0
    epochs_run = history.steps[-1]["epoch"] + 1
    print(f"trained on {n_sims} simulations: {epochs_run} epochs, {train_s:.1f} s")

    samples = npe.posterior(x_o).sample((len(reference),))
    accuracy = c2st(reference, samples, max_epochs=50 if args.quick else 10000)
    print(f"C2ST against the reference: {accuracy:.3f} (0.5 is indistinguishable)")

    theta_sbc, x_sbc = simulate(prior, simulator, n_sbc, seed=3)
    ranks = sbc_ranks(npe.posterior, theta_sbc, x_sbc, n_post)
    sbc = sbc_test(ranks, n_post, level=0.01)
    levels, coverage = expected_coverage(npe.posterior, theta_sbc, x_sbc, torch.tensor([0.5, 0.9]), 500)
    print(f"SBC chi-square p-values {[round(p, 3) for p in sbc.p_values.tolist()]}; coverage {coverage.tolist()}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = " (quick smoke run)" if args.quick else ""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, title in ((axes[0], reference, f"reference ({source.split(' (')[0]})"), (axes[1], samples, "NPE")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("theta_1")
    axes[0].set_ylabel("theta_2")
    fig.suptitle(f"two moons, posterior at x_o; C2ST {accuracy:.3f}{tag}")
    fig.tight_layout()
    fig.savefig(out / "posterior.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for j, ax in enumerate(axes):
        ax.hist(ranks[:, j].numpy(), bins=sbc.bins, range=(0, n_post + 1))
        ax.axhline(n_sbc / sbc.bins, color="k", lw=1)
        ax.set_title(f"theta_{j + 1}: chi-square p = {sbc.p_values[j]:.3f}", fontsize=9)
        ax.set_xlabel(f"rank among {n_post} posterior draws")
    fig.suptitle(f"simulation-based calibration, {n_sbc} simulations{tag}")
    fig.tight_layout()
    fig.savefig(out / "sbc.png", dpi=110)
    plt.close(fig)

    metrics = {
        "c2st": accuracy,
        "reference": source,
        "simulations": n_sims,
        "epochs": epochs_run,
        "train_s": round(train_s, 2),
        "sbc_p_values": [round(p, 4) for p in sbc.p_values.tolist()],
        "sbc_passed_at_0.01": sbc.passed,
        "coverage_50": float(coverage[0]),
        "coverage_90": float(coverage[1]),
    }
    if args.quick:
        metrics["quick_smoke_run_not_converged"] = True
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
