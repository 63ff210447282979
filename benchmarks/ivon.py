"""IVON on Fashion-MNIST: vitorch against Adam and the authors' ``ivon-opt`` package.

One MLP classifier (784 -> 256 -> 256 -> 10, ReLU; inputs standardized with
training-set statistics) is trained from the same initial weights, in the same
minibatch order (batch 128, a seeded generator), for the same number of epochs, the
learning rate decayed to 0 on a cosine schedule over the run (as in the paper), by:

* ``vitorch.optim.IVON`` (one weight draw per step, ``ess = N``, lr 0.1, h0 0.5,
  beta2 0.9995 since the run is a few thousand steps long, weight decay 1e-4), predicting
  by Bayesian model averaging over 32 posterior draws (`vitorch.optim.bma_predict`);
* ``ivon.IVON`` from ``ivon-opt`` with identical settings and its own draws, predicting
  by averaging the softmax over 32 draws of its ``sampled_params``;
* ``torch.optim.Adam`` (lr 1e-3, torch's default implementation), predicting with the
  trained weights.

Quality lines (one per metric: test accuracy, test NLL, expected calibration error
with 15 bins) carry ``"metric"``, ``"vitorch"`` (IVON's BMA) and ``"peer_value"``;
their times are the whole training runs.  Timing lines compare one training step
(forward, backward and update on a fixed batch of 128, and of 1024 to show that
IVON's extra cost is per weight, not per datum; for IVON the draw and the restore of
the mean too), medians of interleaved repeats in one process, against ``ivon-opt`` and
against Adam (torch's default implementation, and its fused one).  If the Fashion-MNIST files are
missing, scikit-learn's digits stand in (``"data"`` in every line says which).

    python benchmarks/ivon.py [--quick] [--threads 1 --cpu-time] [--epochs E]

References:
    Shen et al., *Variational Learning is Effective for Large Deep Networks* (ICML 2024).
    Kingma & Ba, *Adam: A Method for Stochastic Optimization* (ICLR 2015).
    Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks* (ICML 2017): ECE.
"""

from __future__ import annotations

import math
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

from _harness import clock_name, interleaved_medians, median_time, parser, report, setup, try_import

# This file is itself named ivon.py: drop its folder from the path before importing the peer.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
ivon, _ivon_missing = try_import("ivon")

from vitorch.data import digits, fashion_mnist  # noqa: E402
from vitorch.models.last_layer.metrics import accuracy, expected_calibration_error  # noqa: E402
from vitorch.optim import IVON, bma_predict  # noqa: E402

BATCH, HIDDEN, SAMPLES = 128, 256, 32
IVON_SETTINGS = dict(lr=0.1, hess_init=0.5, beta2=0.9995, weight_decay=1e-4)
ADAM_LR = 1e-3


def load(quick: bool):
    """Standardized train and test tensors, and the data set's name."""
    try:
        train, test, name = fashion_mnist("train", binarize=None), fashion_mnist("test", binarize=None), "fashion-mnist"
    except FileNotFoundError:
        train, test, name = digits("train", binarize=None), digits("test", binarize=None), "sklearn-digits"
    x, y, xt, yt = train.images.float(), train.labels, test.images.float(), test.labels
    if quick:
        x, y, xt, yt = x[:3000], y[:3000], xt[:1000], yt[:1000]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-2)
    return (x - mean) / std, y, (xt - mean) / std, yt, name


def network(dim: int, classes: int) -> nn.Module:
    torch.manual_seed(0)  # the same initial weights for every optimizer
    return nn.Sequential(
        nn.Linear(dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, classes)
    )


def make(kind: str, net: nn.Module, n: int):
    if kind == "vitorch":
        return IVON(net.parameters(), ess=n, seed=1, **IVON_SETTINGS)
    if kind == "ivon":
        return ivon.IVON(net.parameters(), ess=n, **IVON_SETTINGS)
    return torch.optim.Adam(net.parameters(), lr=ADAM_LR, fused=kind == "adam_fused")


def train_step(kind: str, net: nn.Module, opt, x, y) -> None:
    if kind == "vitorch":
        with opt.sampled_params(train=True):
            F.cross_entropy(net(x), y).backward()
    elif kind == "ivon":
        with opt.sampled_params(train=True):
            opt.zero_grad()  # ivon-opt reads each draw's .grad as it is
            F.cross_entropy(net(x), y).backward()
    else:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
    opt.step()


@torch.no_grad()
def predict(kind: str, net: nn.Module, opt, x) -> torch.Tensor:
    if kind == "vitorch":
        return bma_predict(net, opt, x, samples=SAMPLES, generator=torch.Generator().manual_seed(2))
    if kind == "ivon":
        total = 0
        for _ in range(SAMPLES):
            with opt.sampled_params():
                total = total + torch.softmax(net(x), -1)
        return total / SAMPLES
    return torch.softmax(net(x), -1)


def fit(kind: str, data, epochs: int):
    """Train from the shared initial weights in the shared batch order; return (net, opt, seconds)."""
    x, y = data[0], data[1]
    net = network(x.shape[1], int(y.max()) + 1)
    opt = make(kind, net, len(y))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(y) / BATCH))
    torch.manual_seed(1)  # ivon-opt draws from the global generator; the batch order has its own
    order = torch.Generator().manual_seed(0)
    elapsed = 0.0

    def epoch():
        for idx in torch.randperm(len(y), generator=order).split(BATCH):
            train_step(kind, net, opt, x[idx], y[idx])
            schedule.step()

    for _ in range(epochs):
        elapsed += median_time(epoch, repeats=1, warmup=0)
    return net, opt, elapsed


def scores(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    nll = float(-probs.clamp_min(1e-12).log().gather(1, labels[:, None]).mean())
    return {"accuracy": accuracy(probs, labels), "nll": nll, "ece": expected_calibration_error(probs, labels)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 10; --quick: 1)")
    args = p.parse_args()
    setup(args)
    quick = args.quick
    epochs = args.epochs or (1 if quick else 10)
    repeats = args.repeats or (10 if quick else 200)
    x, y, xt, yt, name = load(quick)
    tag = {"clock": clock_name(), "threads": args.threads, "data": name, "epochs": epochs, "n_train": len(y)}

    kinds = ["vitorch", "adam"] + (["ivon"] if ivon is not None else [])
    results = {}
    for kind in kinds:
        net, opt, seconds = fit(kind, (x, y), epochs)
        results[kind] = (scores(predict(kind, net, opt, xt), yt), seconds)
    ours, ours_s = results["vitorch"]
    for peer, label in (("ivon", "ivon"), ("adam", "torch")):
        case = f"mlp {name}, {epochs} epochs: IVON (BMA {SAMPLES}) vs " + (
            "ivon-opt (BMA)" if peer == "ivon" else "Adam"
        )
        for metric in ("accuracy", "nll", "ece"):
            if peer not in results:
                report(
                    "ivon", case, ours_s, label, None, skipped=_ivon_missing, metric=metric, vitorch=ours[metric], **tag
                )
                continue
            theirs, theirs_s = results[peer]
            report(
                "ivon",
                case,
                ours_s,
                label,
                theirs_s,
                metric=metric,
                vitorch=ours[metric],
                peer_value=theirs[metric],
                **tag,
            )

    # One training step on a fixed batch, every optimizer timed in alternation.
    step_tag = {k: v for k, v in tag.items() if k != "epochs"}
    for batch in (BATCH, 1024):
        steps = {}
        xb, yb = x[:batch], y[:batch]
        for kind in ["vitorch", "adam", "adam_fused"] + (["ivon"] if ivon is not None else []):
            net = network(x.shape[1], int(y.max()) + 1)
            opt = make(kind, net, len(y))
            steps[kind] = lambda kind=kind, net=net, opt=opt, xb=xb, yb=yb: train_step(kind, net, opt, xb, yb)
        times = interleaved_medians(steps, repeats=repeats if batch == BATCH else max(repeats // 4, 5), warmup=5)
        case = f"mlp {name} training step, batch {batch}"
        peer_s = times.get("ivon")
        missing = {} if peer_s is not None else {"skipped": _ivon_missing}
        report("ivon", case + ": IVON vs ivon-opt", times["vitorch"], "ivon", peer_s, **missing, **step_tag)
        report("ivon", case + ": IVON vs Adam", times["vitorch"], "torch", times["adam"], **step_tag)
        report("ivon", case + ": IVON vs fused Adam", times["vitorch"], "torch", times["adam_fused"], **step_tag)


if __name__ == "__main__":
    main()
