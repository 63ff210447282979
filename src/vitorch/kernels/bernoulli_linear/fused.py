"""The Bernoulli output layer as one autograd node with a hand-derived backward.

Same function and gradient as `.reference`, with fewer passes over the
``[S*B, D]`` logits, which dominate the non-matrix-product work of a Bernoulli
VAE's step at many particles:

* the reference materializes the expanded data, ``log_sigmoid``'s outputs and their
  products in the forward, and ``sigmoid(l) - x`` scaled by the incoming gradient in
  the backward;
* here the forward is one ``softplus``, one in-place ``addcmul_`` and a row sum, and
  the backward one ``sigmoid`` and one in-place ``sub_`` over the logits' own buffer,
  the per-row incoming gradient being applied on the narrow ``[S*B, H]`` side of the
  weight and bias products.

The derivative used: ``d log p / d l_j = x_j - sigmoid(l_j)``, so with ``r = sigmoid(l) - x``
and an incoming gradient ``g [S*B]``: ``dh = -(g r) W``, ``dW = -r^T (g h)``,
``db = -r^T g``.

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1;
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016),
    section 5 (the many-particle regime where the logits dominate).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["BernoulliLinear", "bernoulli_linear_log_prob"]


class BernoulliLinear(torch.autograd.Function):
    """``(h [N, H], weight [D, H], bias [D], x [B, D]) -> log p(x | l) [S, B]``, ``l = h W^T + b``, ``N = S*B``.

    No gradient flows to ``x`` (data).  Not twice differentiable: the backward reads
    logits computed without a graph (``once_differentiable`` makes a double backward raise).

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
        batch, width = x.shape
        logits = torch.addmm(bias, h, weight.t())  # [S*B, D]
        ctx.save_for_backward(h, weight, bias, x)
        # The logits are an intermediate of this node alone: the first backward turns them
        # into its residual in place (no second buffer of their size); a repeated backward
        # (retain_graph=True) recomputes them.
        ctx.logits = logits
        # -log p = sum_j softplus(l_j) - x_j l_j, built inside softplus's buffer: the only
        # other [S, B, D] tensor the forward writes (x broadcasts over S).
        l3 = logits.view(-1, batch, width)
        return F.softplus(l3).addcmul_(l3, x, value=-1.0).sum(-1).neg_()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        h, weight, bias, x = ctx.saved_tensors
        batch, width = x.shape
        logits, ctx.logits = ctx.logits, None
        if logits is None:  # a second backward through the same graph
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
    """`BernoulliLinear` on ``h [*S, B, H]``: returns ``[*S, B]`` (shapes checked by the caller).

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1.
    """
    out = BernoulliLinear.apply(h.reshape(-1, h.shape[-1]), weight, bias, x)
    return out.view(h.shape[:-1])
