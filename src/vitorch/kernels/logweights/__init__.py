"""Kernel 2b: log-sum-exp, normalized weights and squared normalized weights along the particle dimension."""

from __future__ import annotations

from torch import Tensor

from .. import dispatch
from . import reference

__all__ = ["logsumexp", "normalized_weights"]


def _check(name: str, log_w: Tensor) -> None:
    if log_w.dim() < 1 or log_w.shape[0] < 1:
        raise ValueError(f"{name}: log_w must be [K, *batch] with K >= 1; got shape {tuple(log_w.shape)}")


def logsumexp(log_w: Tensor, *, backend: str | None = None) -> Tensor:
    """``log sum_k exp(log_w[k])`` of clamped log-weights (finite on all ``-inf`` columns).

    Args:
        log_w: ``[K, *batch]`` log-weights, particles first.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"``.

    Returns:
        ``[*batch]`` in ``log_w``'s dtype; its gradient is the normalized weights
        (zero where ``log_w`` was clamped).

    Raises:
        ValueError: if ``log_w`` has no particle dimension.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016).
        Blanchard, Higham & Higham, *Accurately Computing the Log-Sum-Exp and Softmax Functions*
        (IMA J. Numer. Anal., 2021).
    """
    _check("logsumexp", log_w)
    if dispatch.choose("logsumexp", log_w, backend=backend) == "reference":
        return reference.logsumexp(log_w)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from .triton import LogSumExp

    K = log_w.shape[0]
    return LogSumExp.apply(log_w.reshape(K, -1)).reshape(log_w.shape[1:])


def normalized_weights(log_w: Tensor, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Normalized weights ``w~ = softmax(log_w, 0)`` and their squares, without gradient.

    Args:
        log_w: ``[K, *batch]`` log-weights.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"``.

    Returns:
        ``(w~, w~^2)``, each ``[K, *batch]``; zero where ``log_w`` was clamped, so
        an all ``-inf`` column has all-zero weights.

    Raises:
        ValueError: if ``log_w`` has no particle dimension.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016).
        Blanchard, Higham & Higham, *Accurately Computing the Log-Sum-Exp and Softmax Functions*
        (IMA J. Numer. Anal., 2021).
        Tucker, Lawson, Gu & Maddison, *Doubly Reparameterized Gradient Estimators* (ICLR 2019): the
        squared weights of DReG.
    """
    _check("normalized_weights", log_w)
    if dispatch.choose("normalized_weights", log_w, backend=backend) == "reference":
        return reference.normalized_weights(log_w)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from .triton import normalized_weights as kernel

    K = log_w.shape[0]
    w, w2 = kernel(log_w.detach().reshape(K, -1))
    return w.reshape(log_w.shape), w2.reshape(log_w.shape)
