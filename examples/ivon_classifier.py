"""A classifier trained by IVON through vitorch.fit, against the same network trained by Adam.

IVON (Shen et al., 2024) trains an ordinary ``nn.Module`` and learns a diagonal
Gaussian posterior over its weights on the way; predictions average the softmax over
posterior draws (Bayesian model averaging, `vitorch.optim.bma_predict`).  Both models
here are the same MLP (784 -> 256 -> 256 -> 10, ReLU) on Fashion-MNIST (scikit-learn's
digits if the Fashion-MNIST files are missing), trained by ``vt.fit`` from the same
initial weights for the same number of epochs, the learning rate decayed on a cosine
schedule: one with ``vt.optim.IVON`` (``ess`` = number of training images), one with
Adam.  Reported on the test set: accuracy, NLL
and expected calibration error (15 bins), with a reliability diagram of each model
side by side (``reliability.png``).

    python examples/ivon_classifier.py [--quick] [--out outputs/ivon_classifier]

The last line of output is a JSON object of headline metrics.

References:
    Shen et al., *Variational Learning is Effective for Large Deep Networks* (ICML 2024).
    Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks* (ICML 2017).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
from torch import nn
from torch.nn import functional as F

import vitorch as vt
from vitorch.data import digits, fashion_mnist
from vitorch.models.last_layer.metrics import accuracy, calibration_bins, expected_calibration_error
from vitorch.optim import IVON, bma_predict


class Classifier(nn.Module):
    """An MLP whose forward takes a batch ``(x [B, D], y [B])`` and returns the mean cross-entropy."""

    def __init__(self, dim: int, classes: int, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes)
        )

    def forward(self, batch):
        x, y = batch
        return F.cross_entropy(self.net(x), y)  # the mean NLL per datum, as IVON expects


def load(quick: bool):
    try:
        train, test, name = fashion_mnist("train", binarize=None), fashion_mnist("test", binarize=None), "Fashion-MNIST"
    except FileNotFoundError:
        train, test, name = digits("train", binarize=None), digits("test", binarize=None), "digits"
    x, y, xt, yt = train.images.float(), train.labels, test.images.float(), test.labels
    if quick:
        x, y, xt, yt = x[:4000], y[:4000], xt[:2000], yt[:2000]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-2)
    return (x - mean) / std, y, (xt - mean) / std, yt, name


def scores(probs, labels) -> dict:
    nll = float(-probs.clamp_min(1e-12).log().gather(1, labels[:, None]).mean())
    return {"accuracy": accuracy(probs, labels), "nll": nll, "ece": expected_calibration_error(probs, labels)}


def plot(results: dict, labels, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4), sharey=True)
    edges = torch.linspace(0, 1, 16)
    centers = 0.5 * (edges[1:] + edges[:-1])
    for ax, (name, (probs, metrics)) in zip(axes, results.items()):
        conf, acc, count = calibration_bins(probs, labels, 15)
        used = count > 0
        ax.bar(centers[used], acc[used], width=1 / 15, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot(centers[used], conf[used], "o", color="tab:red", ms=4, label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence",
            title=f"{name}\nECE {metrics['ece']:.4f}, NLL {metrics['nll']:.3f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", default="outputs/ivon_classifier", help="where figures go")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 10; --quick: 1)")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or (1 if args.quick else 10)
    width = 128 if args.quick else 256
    x, y, xt, yt, name = load(args.quick)

    def model():
        torch.manual_seed(0)  # the same initial weights for both optimizers
        return Classifier(x.shape[1], int(y.max()) + 1, width)

    steps = epochs * -(-len(y) // 128)

    def cosine(optimizer):  # the learning rate decays to 0 over the run, for both optimizers
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    results = {}
    ivon_model = model()
    # ess: the number of training data; lr as for SGD (rescaled by hess_init + weight_decay);
    # beta2 below the paper's 0.99999 since this run is only a few thousand steps long.
    opt = IVON(ivon_model.parameters(), lr=0.1, ess=len(y), hess_init=0.5, beta2=0.9995, weight_decay=1e-4, seed=1)
    vt.fit(ivon_model, (x, y), optimizer=opt, scheduler=cosine, epochs=epochs, batch_size=128, seed=0, progress=False)
    probs = bma_predict(ivon_model.net, opt, xt, samples=32, generator=torch.Generator().manual_seed(2))
    results["IVON (BMA, 32 draws)"] = (probs, scores(probs, yt))

    adam_model = model()
    vt.fit(adam_model, (x, y), lr=1e-3, scheduler=cosine, epochs=epochs, batch_size=128, seed=0, progress=False)
    with torch.no_grad():
        probs = torch.softmax(adam_model.net(xt), -1)
    results["Adam"] = (probs, scores(probs, yt))

    title = f"{name}, MLP, {epochs} epoch(s)" + (" (quick smoke run)" if args.quick else "")
    plot(results, yt, out / "reliability.png", title)
    summary = {"data": name, "epochs": epochs}
    for label, key in (("IVON (BMA, 32 draws)", "ivon"), ("Adam", "adam")):
        for metric, value in results[label][1].items():
            summary[f"{key}_{metric}"] = round(value, 4)
        print(f"{label:>22}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[label][1].items()))
    if args.quick:
        summary["quick_smoke_run_not_converged"] = True
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
