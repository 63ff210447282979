"""GP classification of the Wisconsin breast-cancer set with a sparse variational GP.

An SVGP with a Bernoulli likelihood (logit link by default, ``--probit`` for the
probit link; expectations by Gauss–Hermite quadrature) and k-means inducing
inputs is trained on a seeded 70/30 split of scikit-learn's bundled copy of the
data (569 tumours, 30 features, standardized on the training part).  It reports
held-out accuracy, NLPD and Brier score next to the constant (base-rate)
predictor and draws a calibration (reliability) figure.  It trains through
``vt.fit`` (full batch: ``loss = -ELBO / N``) and reads class probabilities with
``predict_proba``.

References:
    Hensman, Matthews & Ghahramani, Scalable Variational Gaussian Process
    Classification (AISTATS 2015).

Run: ``python examples/gp_classification.py [--quick] [--probit] [--out DIR]``; the
last line printed is a JSON object of headline metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

import vitorch as vt  # noqa: E402
from vitorch.models import gp  # noqa: E402


def load(seed: int):
    data = load_breast_cancer()
    x = torch.as_tensor(data.data, dtype=torch.float64)
    y = torch.as_tensor(data.target, dtype=torch.float64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.7 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    mu, sd = x[tr].mean(0), x[tr].std(0)
    return (x[tr] - mu) / sd, y[tr], (x[te] - mu) / sd, y[te]


def calibration_figure(p: torch.Tensor, y: torch.Tensor, path: Path, bins: int = 10, suffix: str = "") -> float:
    """Reliability diagram and histogram of predicted probabilities; returns the expected calibration error."""
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(p, edges[1:-1])
    centres, freq, counts = [], [], []
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            centres.append(float(p[sel].mean()))
            freq.append(float(y[sel].mean()))
            counts.append(int(sel.sum()))
            ece += counts[-1] / len(p) * abs(centres[-1] - freq[-1])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(4.5, 6), height_ratios=[3, 1], sharex=True)
    ax1.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax1.plot(centres, freq, "o-", label="SVGP")
    ax1.set_ylabel("observed frequency of benign")
    ax1.set_title(f"Calibration on held-out data (ECE {ece:.3f})" + suffix)
    ax1.legend(loc="upper left")
    ax2.hist(p.numpy(), bins=edges.numpy(), color="C0", alpha=0.7)
    ax2.set_xlabel("predicted P(benign)")
    ax2.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ece


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    p.add_argument("--probit", action="store_true", help="probit link instead of logit")
    p.add_argument("--out", type=Path, default=Path("outputs") / Path(__file__).stem)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    x, y, xt, yt = load(seed=0)
    m, steps = (16, 100) if args.quick else (32, 400)
    likelihood = gp.BernoulliProbit() if args.probit else gp.BernoulliLogit()
    kernel = gp.Matern52(lengthscale=torch.full((x.shape[1],), 4.0), variance=2.0)
    model = gp.SVGP(kernel, gp.kmeans(x, m), likelihood, num_data=len(y), mean=gp.ConstantMean())
    history = vt.fit(model, (x, y), steps=steps, batch_size=len(y), lr=0.03, seed=0, progress=False)
    for record in history.steps:
        if (record["step"] - 1) % 100 == 0 or record["step"] == steps:
            print(f"step {record['step'] - 1:4d}  -ELBO/N {record['loss']:.4f}")
    with torch.no_grad():
        lp = model.log_predictive(xt, yt)
        prob = model.predict_proba(xt)
    rate = y.mean()
    const_lp = torch.where(yt == 1, rate.log(), (1 - rate).log())
    acc = float(((prob > 0.5).double() == yt).double().mean())
    ece = calibration_figure(prob, yt, args.out / "calibration.png", suffix=" (quick smoke run)" if args.quick else "")
    metrics = {
        "test_accuracy": acc,
        "test_nlpd": float(gp.nlpd(lp)),
        "test_brier": float((prob - yt).pow(2).mean()),
        "ece": ece,
        "constant_accuracy": float(torch.maximum(yt.mean(), 1 - yt.mean())),
        "constant_nlpd": float(gp.nlpd(const_lp)),
        "link": "probit" if args.probit else "logit",
        "M": m,
        "steps": steps,
    }
    print(f"held-out accuracy {acc:.3f}, NLPD {metrics['test_nlpd']:.3f} (constant: {metrics['constant_nlpd']:.3f})")
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
