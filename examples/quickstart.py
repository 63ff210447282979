"""Quickstart: Bayesian logistic regression on the breast-cancer data with a full-rank Gaussian guide.

The model is ``w ~ N(0, I)``, ``y_n ~ Bernoulli(sigmoid(x_n . w))`` on scikit-learn's
bundled Wisconsin breast-cancer set (569 patients, 30 standardized features plus a
bias; no download).  The guide ``q(w) = N(m, L L^T)`` is fitted by ascending the
evidence lower bound (ELBO, K = 8 particles) with reparameterization gradients,
printing the bound as it trains.  The log evidence is then estimated with the
importance-weighted bound at K = 1000 (IWAE, Burda et al. 2016), the importance
weights' effective sample size says how well q covers the posterior, and the
posterior predictive is scored on a held-out quarter of the patients.

    python examples/quickstart.py [--quick] [--out outputs/quickstart]

The last line of output is a JSON object of headline metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch
from torch.nn import functional as F

import vitorch as vt


def load_data(seed: int = 0):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.75 * len(y))
    train, test = perm[:n_train], perm[n_train:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = torch.cat([(x - mean) / std, torch.ones(len(y), 1, dtype=x.dtype)], 1)  # bias column
    return x[train], y[train], x[test], y[test]


def make_log_joint(x, y, prior_scale=1.0):
    """``w [K, D] -> log p(y, w | x) [K]``."""

    def log_joint(w):
        logits = w @ x.T  # [K, N]
        log_lik = -F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").sum(-1)
        log_prior = (-0.5 * (w / prior_scale).pow(2) - math.log(prior_scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_lik + log_prior

    return log_joint


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", default="outputs/quickstart", help="where figures go")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("-K", "--particles", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a model this small gains nothing from more, and extra "
        "threads on a busy machine make every step wait for the slowest)",
    )
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (150 if args.quick else 1500)

    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    d = x_tr.shape[1]
    log_joint = make_log_joint(x_tr, y_tr)

    loc = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    raw_tril = torch.zeros(d, d, dtype=torch.float64, requires_grad=True)
    log_diag = torch.full((d,), math.log(0.1), dtype=torch.float64, requires_grad=True)

    def guide():
        tril = raw_tril.tril(-1) + torch.diag(log_diag.exp())
        return vt.FullRankNormal(loc, tril)

    objective, estimator = vt.objectives.elbo, vt.estimators.reparam
    vt.check(guide(), args.particles, objective, estimator)  # fail at set-up, not mid-run
    opt = torch.optim.Adam([loc, raw_tril, log_diag], lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        out = vt.loss(log_joint, guide(), args.particles, objective, estimator)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
        history.append(out.bound.item())
        if step % max(1, steps // 10) == 0 or step == 1:
            print(f"step {step:5d}  ELBO {out.bound.item():10.3f}  (K={args.particles})", flush=True)
    seconds = time.perf_counter() - t0

    with torch.no_grad():
        q = guide()
        final = vt.loss(log_joint, q, 1000, vt.objectives.iwae)  # a tighter estimate of log p(y | x)
        elbo = vt.loss(log_joint, q, 1000, vt.objectives.elbo).bound.item()
        w = q.sample((2000,))
        probs = torch.sigmoid(w @ x_te.T).mean(0)  # posterior predictive
        test_nll = F.binary_cross_entropy(probs, y_te).item()
        accuracy = ((probs > 0.5).double() == y_te).double().mean().item()
        lw = final.log_w
        ess = (torch.logsumexp(lw, 0) * 2 - torch.logsumexp(2 * lw, 0)).exp().item()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(history, lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("ELBO (nats)")
        ax.set_ylim(min(history[len(history) // 10 :]) - 20, max(history) + 5)
        title = "Bayesian logistic regression, full-rank Gaussian guide"
        ax.set_title(title + (" (quick smoke run)" if args.quick else ""))
        fig.tight_layout()
        fig.savefig(out_dir / "bound.png", dpi=120)
        plt.close(fig)
        print(f"figure written to {out_dir / 'bound.png'}")
    except ImportError:
        print("matplotlib is not installed; skipping the figure (pip install vitorch[examples])")

    metrics = {
        "example": "quickstart",
        "quick_smoke_run_not_converged": args.quick,
        "steps": steps,
        "seconds": round(seconds, 2),
        "final_elbo_estimate": round(history[-1], 3),
        "log_evidence_iwae1000": round(final.bound.item(), 3),
        "elbo_k1000": round(elbo, 3),
        "importance_ess_of_1000": round(ess, 1),
        "test_accuracy": round(accuracy, 4),
        "test_nll": round(test_nll, 4),
    }
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
