"""Kernel 2a: Bernoulli and Gaussian decoder log-likelihoods reduced over ``D`` without per-element terms."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import reference

__all__ = ["bernoulli_log_lik", "gaussian_log_lik"]


def _broadcast(name: str, **tensors: Tensor) -> torch.Size:
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
        raise ValueError(f"{name}: shapes do not broadcast: {shapes}") from None
    if len(shape) < 1:
        raise ValueError(
            f"{name}: inputs need an event dimension D; got shapes {[tuple(t.shape) for t in tensors.values()]}"
        )
    return shape


def bernoulli_log_lik(x: Tensor, logits: Tensor, *, backend: str | None = None) -> Tensor:
    """``sum_d x_d l_d - softplus(l_d)``, broadcasting ``x [*batch, D]`` against ``logits [*sample, *batch, D]``.

    Args:
        x: data in [0, 1], any shape broadcasting with ``logits``.
        logits: decoder logits.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"`` (see `vitorch.kernels.dispatch`).

    Returns:
        The broadcast shape without its last dimension, e.g. ``[K, B]``.

    Raises:
        ValueError: if the shapes do not broadcast.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1: Bernoulli decoders.
        Tillet, Kung & Cox, *Triton: An Intermediate Language and Compiler for Tiled Neural Network
        Computations* (MAPL 2019).
    """
    shape = _broadcast("bernoulli_log_lik", x=x, logits=logits)
    if dispatch.choose("bernoulli_log_lik", x, logits, backend=backend) == "reference":
        return reference.bernoulli_log_lik(x, logits)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from .triton import LogLik

    return LogLik.apply(x, logits, logits, shape, False)


def gaussian_log_lik(x: Tensor, mean: Tensor, scale: Tensor | float, *, backend: str | None = None) -> Tensor:
    """``sum_d log N(x_d | mean_d, scale_d^2)`` with ``x``, ``mean``, ``scale`` broadcast together.

    Args:
        x: data, e.g. ``[B, D]``.
        mean: decoder means, e.g. ``[K, B, D]``.
        scale: positive standard deviations, e.g. ``[K, B, D]``, ``[D]``, ``[]`` or a float.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"``.

    Returns:
        The broadcast shape without its last dimension.

    Raises:
        ValueError: if the shapes do not broadcast.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.2: Gaussian decoders.
        Tillet, Kung & Cox, *Triton: An Intermediate Language and Compiler for Tiled Neural Network
        Computations* (MAPL 2019).
    """
    if not isinstance(scale, Tensor):
        scale = torch.as_tensor(scale, dtype=mean.dtype, device=mean.device)
    shape = _broadcast("gaussian_log_lik", x=x, mean=mean, scale=scale)
    if dispatch.choose("gaussian_log_lik", x, mean, scale, backend=backend) == "reference":
        return reference.gaussian_log_lik(x, mean, scale)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from .triton import LogLik

    return LogLik.apply(x, mean, scale, shape, True)
