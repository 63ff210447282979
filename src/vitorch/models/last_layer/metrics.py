"""Metrics for probabilistic predictions: NLL, RMSE, accuracy, calibration error, AUROC, reliability diagrams.

All take tensors and return Python floats (or arrays for the diagram data), so the
examples and benchmarks report the same numbers the same way.

References:
    Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks* (2017)
    for the expected calibration error and reliability diagrams; Hanley & McNeil
    (1982) for AUROC as the Mann-Whitney statistic.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["nll", "rmse", "accuracy", "calibration_bins", "expected_calibration_error", "auroc", "reliability_diagram"]


def nll(predictive: Distribution, y: Tensor) -> float:
    """Mean negative log predictive density ``-mean_n log p(y_n)``, a Python float.

    Args:
        predictive: a torch distribution with batch shape ``[N]`` (event ``[O]`` for
            several outputs), such as ``head(phi).predictive``.
        y: ``[N]`` (or ``[N, O]``) observed targets.

    References:
        Gneiting & Raftery, *Strictly Proper Scoring Rules, Prediction, and
        Estimation* (JASA, 2007): the logarithmic score.
    """
    return float(-predictive.log_prob(y).detach().mean())


def rmse(predictive: Distribution, y: Tensor) -> float:
    """Root mean squared error of the predictive mean, a Python float.

    Args:
        predictive: a torch distribution with batch shape ``[N]`` (event ``[O]``).
        y: ``[N]`` (or ``[N, O]``) observed targets.

    References:
        Hernández-Lobato & Adams, *Probabilistic Backpropagation for Scalable Learning
        of Bayesian Neural Networks* (ICML 2015): RMSE and test log-likelihood as the
        regression benchmark's two scores.
    """
    return float((predictive.mean.detach() - y).pow(2).mean().sqrt())


def _check_probs(probs: Tensor, labels: Tensor) -> None:
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, C] and labels [N]; got {tuple(probs.shape)} and {tuple(labels.shape)}")


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of ``argmax_k probs[n, k] == labels[n]``, a Python float.

    Args:
        probs: ``[N, C]`` predictive class probabilities.
        labels: ``[N]`` integer labels.

    References:
        Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks*
        (ICML 2017), Sec. 2: accuracy of the top-class prediction.
    """
    _check_probs(probs, labels)
    return float((probs.argmax(-1) == labels).to(torch.float64).mean())


def calibration_bins(probs: Tensor, labels: Tensor, num_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Equal-width confidence bins: ``(mean confidence, accuracy, count)``, each ``[num_bins]``.

    Empty bins have confidence and accuracy NaN and count 0.

    Args:
        probs: ``[N, C]`` predictive class probabilities.
        labels: ``[N]`` integer labels.
        num_bins: number of equal-width bins on ``[0, 1]``.

    References:
        Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks*
        (ICML 2017), Sec. 2 (the binning behind ECE and reliability diagrams).
    """
    _check_probs(probs, labels)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1; got {num_bins}")
    conf, pred = probs.detach().max(-1)
    correct = (pred == labels).to(torch.float64)
    conf = conf.to(torch.float64)
    # bin b holds confidences in (b/B, (b+1)/B]; confidence 1 falls in the last bin
    idx = (conf * num_bins).ceil().long().clamp(1, num_bins) - 1
    zeros = conf.new_zeros(num_bins)
    count = zeros.index_add(0, idx, torch.ones_like(conf))
    conf_sum = zeros.index_add(0, idx, conf)
    acc_sum = zeros.index_add(0, idx, correct)
    return conf_sum / count, acc_sum / count, count


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> float:
    """``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over equal-width confidence bins, a Python float.

    Args:
        probs: ``[N, C]`` predictive class probabilities.
        labels: ``[N]`` integer labels.
        num_bins: number of equal-width bins on ``[0, 1]``.

    References:
        Naeini, Cooper & Hauskrecht, *Obtaining Well Calibrated Probabilities Using
        Bayesian Binning* (AAAI 2015); Guo, Pleiss, Sun & Weinberger, *On Calibration
        of Modern Neural Networks* (ICML 2017), Eq. 3.
    """
    conf, acc, count = calibration_bins(probs, labels, num_bins)
    used = count > 0
    return float(((count[used] / count.sum()) * (acc[used] - conf[used]).abs()).sum())


def auroc(score_in: Tensor, score_out: Tensor) -> float:
    """Area under the ROC curve for telling ``score_out`` (positives) from ``score_in``.

    Computed as the Mann-Whitney statistic ``P(s_out > s_in) + 1/2 P(s_out = s_in)``,
    with average ranks for ties.  Larger scores mean "more out of distribution".

    Args:
        score_in: ``[N_in]`` scores of in-distribution inputs.
        score_out: ``[N_out]`` scores of out-of-distribution inputs.

    Returns:
        The AUROC in ``[0, 1]``, a Python float.

    References:
        Hanley & McNeil, *The Meaning and Use of the Area under a Receiver Operating
        Characteristic (ROC) Curve* (Radiology, 1982); Hendrycks & Gimpel, *A Baseline
        for Detecting Misclassified and Out-of-Distribution Examples* (ICLR 2017).
    """
    if score_in.dim() != 1 or score_out.dim() != 1 or not len(score_in) or not len(score_out):
        raise ValueError(
            f"auroc needs two non-empty 1-D score tensors; got {tuple(score_in.shape)} and {tuple(score_out.shape)}"
        )
    scores = torch.cat([score_in, score_out]).detach().to(torch.float64)
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64, device=scores.device)
    # average the ranks of tied scores
    uniq, inverse = torch.unique(scores, return_inverse=True)
    rank_sum = ranks.new_zeros(len(uniq)).index_add(0, inverse, ranks)
    rank_cnt = ranks.new_zeros(len(uniq)).index_add(0, inverse, torch.ones_like(ranks))
    ranks = (rank_sum / rank_cnt)[inverse]
    n_in, n_out = len(score_in), len(score_out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


def reliability_diagram(
    probs: Tensor, labels: Tensor, path: str | os.PathLike, num_bins: int = 15, title: str | None = None
) -> float:
    """Save a reliability diagram (accuracy against confidence per bin) as a PNG; returns the ECE.

    Needs matplotlib (imported here, with the Agg backend, so the library itself does not).

    Args:
        probs: ``[N, C]`` predictive class probabilities.
        labels: ``[N]`` integer labels.
        path: where the PNG is written.
        num_bins: number of equal-width confidence bins.
        title: optional first line of the plot's title.

    References:
        DeGroot & Fienberg, *The Comparison and Evaluation of Forecasters* (1983);
        Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks*
        (ICML 2017), Fig. 1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, acc, count = (t.cpu() for t in calibration_bins(probs, labels, num_bins))
    ece = expected_calibration_error(probs, labels, num_bins)
    edges = torch.linspace(0, 1, num_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    used = count > 0
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(centers[used], acc[used], width=1 / num_bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title((title + "\n" if title else "") + f"ECE = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ece
