"""Classifier two-sample test (C2ST): how well a classifier tells two samples apart.

The accuracy of a classifier trained to separate samples of ``P`` from samples of
``Q`` is 0.5 when ``P = Q`` and approaches 1 as they separate.  Following sbibm (Lueckmann
et al., 2021), so numbers compare with published benchmarks: both samples are
z-scored with the mean and standard deviation of the first, the classifier is an MLP
with two ReLU hidden layers of ``10 * D`` units trained with Adam (learning rate 1e-3,
batches of 200, L2 penalty 1e-4, Glorot-uniform initialization, stopped once the
training loss improves by less than 1e-4 for 10 epochs), and the accuracy is the mean
over a shuffled 5-fold cross-validation.  ``backend="sklearn"`` runs scikit-learn's
``MLPClassifier`` with exactly sbibm's settings instead (if scikit-learn is installed).

References:
    Lopez-Paz & Oquab, *Revisiting classifier two-sample tests* (ICLR 2017).
    Lueckmann, Boelts, Greenberg, Goncalves & Macke, *Benchmarking simulation-based
    inference* (AISTATS 2021), sec. 3 (C2ST as the benchmark metric).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["c2st"]


def _classifier(d: int) -> nn.Sequential:
    width = 10 * d
    net = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    for layer in net[::2]:
        # scikit-learn's initialization: uniform with bound sqrt(6 / (fan_in + fan_out)).
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
        nn.init.uniform_(layer.weight, -bound, bound)
        nn.init.uniform_(layer.bias, -bound, bound)
    return net


def _fit_predict(train_x, train_y, test_x, gen, max_epochs, batch=200, alpha=1e-4, tol=1e-4, patience=10) -> Tensor:
    net = _classifier(train_x.shape[1]).to(train_x)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    weights = [layer.weight for layer in net[::2]]
    n = train_x.shape[0]
    bs = min(batch, n)
    best, stale = math.inf, 0
    for _ in range(max_epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for idx in order.split(bs):
            xb, yb = train_x[idx], train_y[idx]
            loss = F.binary_cross_entropy_with_logits(net(xb).squeeze(-1), yb)
            # scikit-learn's penalty: 0.5 * alpha * ||W||^2 per batch, divided by the batch size.
            loss = loss + 0.5 * alpha * sum(w.pow(2).sum() for w in weights) / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        epoch_loss = total / n
        stale = stale + 1 if epoch_loss > best - tol else 0
        best = min(best, epoch_loss)
        if stale > patience:
            break
    with torch.no_grad():
        return (net(test_x).squeeze(-1) > 0).to(train_y)


def c2st(
    X: Tensor,
    Y: Tensor,
    *,
    seed: int = 1,
    n_folds: int = 5,
    z_score: bool = True,
    max_epochs: int = 10000,
    backend: str = "torch",
) -> float:
    """Cross-validated accuracy of an MLP classifier separating ``X`` from ``Y``.

    Args:
        X: ``[N, D]`` sample of the first distribution (e.g. reference posterior draws).
        Y: ``[M, D]`` sample of the second (e.g. draws from the approximation).
        seed: seed of the folds and the classifier.
        n_folds: folds of the cross-validation.
        z_score: standardize both with ``X``'s mean and standard deviation.
        max_epochs: the most training epochs per fold (sbibm: 10000; a small sample in
            many dimensions can take thousands of epochs to meet the stopping rule).
        backend: ``"torch"`` (this module's MLP) or ``"sklearn"`` (scikit-learn's
            ``MLPClassifier``, sbibm's exact code path).

    Returns:
        The mean held-out accuracy, about 0.5 for equal distributions and 1 for disjoint ones.

    Raises:
        ValueError: for samples that are not ``[N, D]`` with one ``D``, too few rows for
            the folds, non-finite values or an unknown backend.

    References:
        Lopez-Paz & Oquab, *Revisiting classifier two-sample tests* (ICLR 2017);
        Lueckmann et al., *Benchmarking simulation-based inference* (AISTATS 2021).
    """
    if not isinstance(X, Tensor) or not isinstance(Y, Tensor) or X.dim() != 2 or Y.dim() != 2:
        raise ValueError(
            f"c2st: X and Y must be [N, D] tensors; got {getattr(X, 'shape', X)}, {getattr(Y, 'shape', Y)}"
        )
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"c2st: X and Y must have the same D; got {tuple(X.shape)} and {tuple(Y.shape)}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"c2st: n_folds must be an integer >= 2; got {n_folds!r}")
    if min(X.shape[0], Y.shape[0]) < n_folds:
        raise ValueError(f"c2st: each sample needs at least n_folds={n_folds} rows; got {X.shape[0]} and {Y.shape[0]}")
    if not bool(torch.isfinite(X).all()) or not bool(torch.isfinite(Y).all()):
        raise ValueError("c2st: X and Y must be finite")
    if backend not in ("torch", "sklearn"):
        raise ValueError(f"c2st: backend must be 'torch' or 'sklearn'; got {backend!r}")
    X, Y = X.detach().double(), Y.detach().double()
    if z_score:
        mean, std = X.mean(0), X.std(0)
        X, Y = (X - mean) / std, (Y - mean) / std
    data = torch.cat([X, Y])
    target = torch.cat([torch.zeros(X.shape[0]), torch.ones(Y.shape[0])]).double()
    if backend == "sklearn":
        return _sklearn(data, target, seed, n_folds, max_epochs)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        folds = torch.randperm(data.shape[0], generator=gen).tensor_split(n_folds)
        scores = []
        for k, test in enumerate(folds):
            train = torch.cat([f for j, f in enumerate(folds) if j != k])
            pred = _fit_predict(data[train].float(), target[train].float(), data[test].float(), gen, max_epochs)
            scores.append(float((pred.double() == target[test]).double().mean()))
    return sum(scores) / len(scores)


def _sklearn(data: Tensor, target: Tensor, seed: int, n_folds: int, max_epochs: int) -> float:
    try:
        from sklearn.model_selection import KFold, cross_val_score
        from sklearn.neural_network import MLPClassifier
    except ImportError as err:  # optional dependency
        raise ImportError("c2st(backend='sklearn') needs scikit-learn; use backend='torch'") from err
    d = data.shape[1]
    clf = MLPClassifier(
        activation="relu", hidden_layer_sizes=(10 * d, 10 * d), max_iter=max_epochs, solver="adam", random_state=seed
    )
    cv = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, data.numpy(), target.numpy(), cv=cv, scoring="accuracy").mean())
