"""Fused pieces of the VAE's training step: the Bernoulli output layer and a cheaper tanh.

Two operations dominate the non-matrix-product time of the Burda et al. MLP VAE on a
CPU, and both are written here with a hand-derived backward that does less work than
the autograd graph of their textbook form (same function, same gradient):

* :func:`bernoulli_linear_log_prob`: the decoder's last ``Linear`` and the Bernoulli
  log-likelihood ``log p(x | z) = sum_j x_j l_j - softplus(l_j)`` of its logits ``l``
  as one autograd node.  The textbook form (``Linear`` then
  ``binary_cross_entropy_with_logits(l, x.expand_as(l))``) materializes the expanded
  data, ``1 - x``, ``log_sigmoid``'s two outputs and their products over the whole
  ``[K*B, D]`` logits in the forward, and in the backward ``sigmoid(l) - x`` scaled by
  the incoming gradient before the weight and bias products.  Here the forward is one
  ``softplus``, one in-place ``addcmul_`` and a row sum; the backward is one
  ``sigmoid`` and one in-place ``sub_`` over ``[K*B, D]``, the per-row incoming
  gradient being applied on the narrow ``[K*B, H]`` side of the products.
* :class:`Tanh`: ``tanh(x) = 2 sigmoid(2x) - 1`` with torch's ``tanh_backward``.
  torch's CPU ``tanh`` kernel is several times slower than its ``sigmoid`` kernel
  (3.3 ms against 0.9 ms for the whole formula on ``[6400, 200]`` float32, one
  thread); the identity is exact in real arithmetic and its rounding error is at most
  a few ulps of 1 in absolute terms (``<= 2.4e-7`` in float32, ``<= 4.5e-16`` in
  float64; tested), so it moves a hidden activation by less than float32 noise.

Both pass float64 ``gradcheck``.  :class:`~vitorch.models.vae.VAE` uses the fused
output only where it applies (a :class:`~vitorch.models.vae.MLPDecoder` with a plain
:class:`~vitorch.models.vae.Bernoulli` likelihood, outside ``torch.func`` transforms);
anything else takes the textbook path.

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), appendix C.1 (the
    Bernoulli MLP decoder); Burda, Grosse & Salakhutdinov, *Importance Weighted
    Autoencoders* (2016), section 5 (the 784-200-200-50 tanh architecture).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ..._logspace import _functorch_active

__all__ = ["bernoulli_linear_log_prob", "tanh", "Tanh", "eager_fusable"]

# Below these sizes the fixed cost of the extra ops and of a Python autograd.Function
# (~8 us a call forward and backward on the 2-core development machine) exceeds what it
# saves, and torch's own ops run faster (measured: tanh fwd+bwd on [32, 200] 40 us with
# torch.tanh against 58 us, on [128, 200] 93 us against 76 us; the Bernoulli output on
# [128, 784] logits, K = 1, 1.71 ms against 1.77 ms, on [5, 128, 784] at par).  Inside a
# whole training step the Function's Python costs more than in isolation (cache-cold
# interpreter after the tensor work): the K = 1 VAE step (four [128, 200] tanh layers) ran
# 2% (1 thread) to 4% (2 threads) faster with torch.tanh there, interleaved A/B, so the
# tanh threshold sits above [128, 200] and below [3 * 128, 200].
TANH_FUSED_MIN = 1 << 16
BERNOULLI_FUSED_MIN = 1 << 18


def eager_fusable() -> bool:
    """Whether the hand-written Functions may run: eager code, no ``torch.func`` transform.

    Under ``torch.compile`` Inductor fuses the plain formulas itself, and a ``torch.func``
    transform needs batching rules these Functions do not have.
    """
    return not torch.compiler.is_compiling() and not _functorch_active()


class _BernoulliLinear(torch.autograd.Function):
    """``(h [N, H], weight [D, H], bias [D], x [B, D]) -> log p(x | l) [S, B]``, ``l = h W^T + b``, ``N = S*B``."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
        batch, width = x.shape
        logits = torch.addmm(bias, h, weight.t())  # [S*B, D]
        ctx.save_for_backward(h, weight, bias, x)
        # The logits are an intermediate of this node alone: the first backward turns them
        # into its residual in place (no new [S*B, D] buffer; on a CPU a fresh buffer of
        # that size costs page faults as well as a pass), a repeated one recomputes them.
        ctx.logits = logits
        # -log p = sum_j softplus(l_j) - x_j l_j, built inside softplus's buffer: the only
        # other [S, B, D] tensor the forward writes (x broadcasts over S).
        l3 = logits.view(-1, batch, width)
        return F.softplus(l3).addcmul_(l3, x, value=-1.0).sum(-1).neg_()

    @staticmethod
    @once_differentiable  # the backward reads logits computed without a graph
    def backward(ctx, grad: Tensor):
        h, weight, bias, x = ctx.saved_tensors
        batch, width = x.shape
        logits, ctx.logits = ctx.logits, None
        if logits is None:  # a second backward through the same graph (retain_graph=True)
            logits = torch.addmm(bias, h, weight.t())
        # d log p / d l = x - sigmoid(l); hold its negative, sigmoid(l) - x, in the logits' buffer.
        residual = logits.sigmoid_()
        residual.view(-1, batch, width).sub_(x)
        g = grad.reshape(-1, 1).neg()  # [S*B, 1]: the per-row factor, applied on the narrow side
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.mm(residual, weight).mul_(g)  # [S*B, H]
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(residual.t(), h * g)  # [D, H]
        if ctx.needs_input_grad[2]:
            grad_b = torch.mv(residual.t(), g.view(-1))  # [D]
        return grad_h, grad_w, grad_b, None


def bernoulli_linear_log_prob(h: Tensor, weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """Bernoulli log-likelihood of ``x`` under the logits ``h W^T + b``, fused with that ``Linear``.

    Equal in value and gradient to
    ``-F.binary_cross_entropy_with_logits(F.linear(h, weight, bias), x.expand(...),
    reduction="none").sum(-1)``, with fewer passes over the ``[*S, B, D]`` logits
    (see the module notes); under ``torch.compile`` or a ``torch.func`` transform it is
    that expression.

    Args:
        h: ``[*S, B, H]`` the decoder's last hidden layer (``S`` particle dimensions).
        weight: ``[D, H]`` the output layer's weight (``nn.Linear`` layout).
        bias: ``[D]`` its bias.
        x: ``[B, D]`` the data, entries in ``{0, 1}`` (any real values give the same
            formula ``x l - softplus(l)``); no gradient flows to it.

    Returns:
        ``[*S, B]``: ``sum_j x_j l_j - softplus(l_j)``.

    Raises:
        ValueError: if the shapes do not fit together, ``x`` requires a gradient, or the
            dtypes differ.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), appendix C.1.
    """
    if x.dim() != 2 or h.dim() < 2 or h.shape[-2] != x.shape[0] or weight.shape != (x.shape[1], h.shape[-1]):
        raise ValueError(
            f"bernoulli_linear_log_prob: shapes h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
            f"x {tuple(x.shape)} do not fit (h [*S, B, H], weight [D, H], x [B, D])"
        )
    if bias.shape != (x.shape[1],):
        raise ValueError(f"bernoulli_linear_log_prob: bias must be [{x.shape[1]}]; got {tuple(bias.shape)}")
    if x.requires_grad:
        raise ValueError("bernoulli_linear_log_prob: x must not require a gradient (it is data)")
    if not (h.dtype == weight.dtype == bias.dtype == x.dtype):
        raise ValueError(
            f"bernoulli_linear_log_prob: dtypes differ: h {h.dtype}, weight {weight.dtype}, "
            f"bias {bias.dtype}, x {x.dtype}"
        )
    if not eager_fusable():  # compiled or under torch.func: the same formula as plain ops
        logits = F.linear(h, weight, bias)
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    lead = h.shape[:-1]
    out = _BernoulliLinear.apply(h.reshape(-1, h.shape[-1]), weight, bias, x)
    return out.view(lead)


class _Tanh(torch.autograd.Function):
    """``tanh(x)`` as ``2 sigmoid(2x) - 1``; backward ``g (1 - y^2)`` from the output."""

    # The ctx-style forward: torch's setup_context style costs ~12 us more per call here
    # (its torch.func dispatch), which matters at the sizes of a K = 1 step.
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.mul(x, 2.0).sigmoid_().mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Differentiable (the output it reads is this node's own), so double backward holds.
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: Tensor) -> Tensor:
    """``tanh(x)`` through torch's ``sigmoid`` kernel: ``2 sigmoid(2x) - 1``, any shape.

    Absolute error against ``torch.tanh`` at most a few ulps of 1 (see the module
    notes).  From :data:`TANH_FUSED_MIN` entries on, one autograd node whose backward is
    ``g (1 - y^2)`` at the returned ``y`` (under ``torch.compile`` or ``torch.func``, the
    same formula as plain torch ops); below, ``torch.tanh`` itself.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (2016)
        (tanh hidden units).
    """
    if x.numel() < TANH_FUSED_MIN:
        return torch.tanh(x)
    if eager_fusable():
        return _Tanh.apply(x)
    return torch.sigmoid(x * 2.0).mul(2.0).sub_(1.0)


class Tanh(nn.Module):
    """Drop-in ``nn.Tanh`` computed as ``2 sigmoid(2x) - 1`` on large inputs (see :func:`tanh`); any shape.

    The default hidden activation of :meth:`VAE.mlp <vitorch.models.vae.VAE.mlp>`.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (2016).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() < TANH_FUSED_MIN:  # tanh()'s first branch, inline: one Python call fewer per layer
            return torch.tanh(x)
        return tanh(x)
