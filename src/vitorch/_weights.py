"""What the estimators derive from an objective's value: gradient, DReG and score weights.

Every function takes an objective and detached log-weights ``[K, *batch]`` and returns
``[K, *batch]`` weights.  Each uses the objective's closed form where it has one
(``grad_coefficients``, ``dreg_coefficients``, ``learning_signal``) and otherwise
derives the weights by autograd on the small log-weight tensor, so any objective,
including a plain function ``log_w -> bound``, gets every estimator.

References:
    Tucker, Lawson, Gu & Maddison, *Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives* (ICLR 2019); Ranganath, Gerrish & Blei, *Black Box Variational
    Inference* (AISTATS 2014).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import _logspace as ls
from .objectives import Objective

__all__ = ["grad_weights", "dreg_weights", "learning_signal"]


def grad_weights(objective: Objective, log_w: Tensor) -> Tensor:
    """``dO / d log_w_k``, detached ``[K, *batch]``: each particle's weight in the pathwise gradient.

    References:
        Burda, Grosse & Salakhutdinov (2016), eq. 14: for IWAE the normalized weights.
    """
    closed = getattr(objective, "grad_coefficients", None)
    if closed is not None:
        return closed(log_w.detach())
    with torch.enable_grad():
        x = log_w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(x).sum(), x)
    return g


def dreg_weights(objective: Objective, log_w: Tensor) -> Tensor:
    """Doubly-reparameterized guide weights ``c_k - dc_k / dlog w_k`` with ``c = dO/dlog w``, ``[K, *batch]``.

    The score term ``E[sum_k c_k grad_phi log q(z_k)]`` equals, by the
    reparameterization identity applied to ``c_k`` as a function of ``z_k``,
    ``E[sum_k (dc_k/dlog w_k) grad_z log w_k dz_k/dphi]``; subtracting it from the
    pathwise term leaves these weights (Tucker et al., 2019, eq. 5-8; for IWAE
    ``w~ - w~(1 - w~) = w~^2``).  The diagonal of the Hessian comes from one batched
    double backward.
    """
    closed = getattr(objective, "dreg_coefficients", None)
    if closed is not None:
        return closed(log_w.detach())
    if objective.particlewise:
        return grad_weights(objective, log_w)
    with torch.enable_grad():
        x = log_w.detach().requires_grad_(True)
        (c,) = torch.autograd.grad(objective(x).sum(), x, create_graph=True)
        if not c.requires_grad:  # c does not depend on log w: the objective is linear
            return c.detach()
        K = x.shape[0]
        basis = torch.eye(K, dtype=x.dtype, device=x.device).reshape(K, K, *([1] * (x.dim() - 1)))
        (rows,) = torch.autograd.grad(c, x, grad_outputs=basis.expand(K, *x.shape), is_grads_batched=True)
    return (c - rows.diagonal(0, 0, 1).movedim(-1, 0)).detach()


def learning_signal(objective: Objective, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
    """``[K, *batch]`` signal ``L_k`` multiplying ``grad log q(z_k)`` in the score-function gradient.

    ``O - b`` for a bound that couples its particles (every particle gets the datum's
    value); an objective may give its own (the ELBO: each particle's log-weight).  A
    datum whose bound sits at the floor -1e30 (every weight zero) gets no signal.

    References:
        Ranganath, Gerrish & Blei (2014); Mnih & Rezende (2016), eq. 5.
    """
    closed = getattr(objective, "learning_signal", None)
    if closed is not None:
        return closed(log_w, baseline)
    value = objective(log_w).unsqueeze(0).expand_as(log_w)
    return ls.masked(value - baseline, ls.finite_bound(value))


def _signed(objective: Objective, weights: Tensor) -> Tensor:
    """Ascent weights: negated for a bound that is descended."""
    return weights if objective.sign > 0 else -weights


def _weighted_sum(weights: Tensor, x: Tensor) -> Tensor:
    """``sum_k weights_k x_k`` over the finite ``x_k`` only: a particle of zero weight
    (``x_k = -inf``) contributes neither a value nor a gradient."""
    return ls.masked(weights * x, torch.isfinite(x)).sum(0)


def _per_particle(weights: Tensor, like: Tensor) -> Tensor:
    """Broadcast ``[K, *batch]`` weights over the event dimensions of ``like``."""
    return weights.reshape(weights.shape + (1,) * (like.dim() - weights.dim()))


def _warn_if_lost(objective: Objective, c_model: Tensor, c_guide: Tensor) -> None:
    """Warn when a particle the guide weighs got a model weight too small for the precision.

    The guide's gradient is the model's rescaled per particle (see the module notes), so
    such a particle passes nothing to the guide: PIWAE's guide in float32 with
    log-weights spread over more than ~87 nats.  Python shows the warning once per place.
    """
    info = torch.finfo(c_model.dtype)
    lost = (c_model.abs() < info.tiny) & (c_guide.abs() > info.eps)
    if lost.any():
        warnings.warn(
            f"{objective.name}: {int(lost.sum())} particle(s) weigh in the guide's bound but their model weight "
            f"underflows in {c_model.dtype}, so they pass no gradient to the guide (log-weights spread over more "
            "than the precision's range); use float64 for this model",
            RuntimeWarning,
            stacklevel=4,
        )
