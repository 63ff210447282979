"""Fused VBLL regression loss for the dense (Cholesky) posterior: one autograd node, hand-derived gradients.

The minibatch loss of :class:`~vitorch.models.last_layer.VBLLRegression` costs about
forty small tensor operations forward and as many backward, which dominates a
training step of a small network on CPU.  This module computes the same scalar,

    loss = -(1/B) sum_n sum_i [-(r_ni^2 + ||L_i^T phi_n||^2) / (2 v_i) - log(v_i) / 2 - log(2 pi) / 2]
           + (KL(q || p) - log p(Sigma)) / N_data,

with ``r = y - phi M^T``, ``S_i = L_i L_i^T``, ``L_i = tril(F_i, -1) + diag(exp(l_i))`` where
``F_i`` is the stored ``raw`` factor and ``l_i`` its diagonal,
and returns its gradients from a dozen matrix products.  With ``P_i = Phi L_i``,
``pi_i = 1 / v_i`` and ``R = r * pi``:

    d/dM     = -(1/B) R^T Phi + M / (s^2 N_data)
    d/dL_i   =  (1/B) pi_i Phi^T P_i + L_i / (s^2 N_data)
    d/dF_i   =  tril(d/dL_i, -1) + diag(diag(d/dL_i) exp(l_i) - 1 / N_data)
    d/dlog v = -(1/2) (pi sum_n (r^2 + Q) / B - 1) + (a - psi pi / 2) / N_data   (a, psi: IW prior)
    d/dPhi   = -(1/B) (R M - sum_i pi_i P_i L_i^T),      d/dy = R / B.

:func:`reference_loss` is the readable autograd specification; the tests compare
both, forward and backward, on random inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def reference_loss(phi, y, mean, raw, log_v, prior_var, num_data, iw_a, iw_psi) -> Tensor:
    """The loss by plain autograd (the specification).  ``iw_a = 0, iw_psi = 0`` drops the noise prior."""
    log_diag = raw.diagonal(dim1=-2, dim2=-1)
    tril = raw.tril(-1) + torch.diag_embed(log_diag.exp())
    resid = y - phi @ mean.mT
    quad = torch.matmul(phi, tril).pow(2).sum(-1).mT
    expected = -0.5 * ((resid.pow(2) + quad) / log_v.exp() + log_v + _LOG_2PI).sum(-1)
    d = mean.shape[-1]
    kl = 0.5 * ((tril.pow(2).sum((-2, -1)) + mean.pow(2).sum(-1)) / prior_var - 2 * log_diag.sum(-1))
    kl = kl.sum() + 0.5 * mean.shape[0] * d * (math.log(prior_var) - 1)
    log_prior = -(iw_a * log_v + 0.5 * iw_psi * (-log_v).exp()).sum()
    return -(expected.mean() + (log_prior - kl) / num_data)


class _DenseRegressionLoss(torch.autograd.Function):
    # Written for few tensor operations: on CPU a small head is bound by per-op overhead,
    # and every Python scalar in an expression costs one more operation.
    @staticmethod
    def forward(ctx, phi, y, mean, raw, log_v, prior_var, num_data, iw_a, iw_psi):
        b, o = y.shape
        d = phi.shape[-1]
        log_diag = raw.diagonal(dim1=-2, dim2=-1)
        tril = raw.tril(-1)
        tril.diagonal(dim1=-2, dim2=-1).copy_(log_diag.exp())  # [O, D, D], a fresh tensor
        prec = log_v.neg().exp_()  # [O]
        resid = torch.addmm(y, phi, mean.mT, alpha=-1)  # [B, O]
        proj = phi @ tril[0] if o == 1 else torch.matmul(phi, tril)  # [B, D] or [O, B, D]
        sq_sum = (resid * resid).sum(0) + (proj * proj).sum((-2, -1))  # [O]
        # every term the loss sums, each with its coefficient, in one dot product
        terms = torch.stack(
            [sq_sum @ prec, log_v.sum(), (tril * tril).sum() + (mean * mean).sum(), log_diag.sum(), prec.sum()]
        )
        coef = terms.new_tensor(
            [0.5 / b, 0.5 + iw_a / num_data, 0.5 / (prior_var * num_data), -1.0 / num_data, 0.5 * iw_psi / num_data]
        )
        const = 0.5 * o * _LOG_2PI + 0.5 * o * d * (math.log(prior_var) - 1) / num_data
        ctx.save_for_backward(phi, mean, raw, tril, prec, resid, proj, sq_sum)
        ctx.consts = (b, o, prior_var, num_data, iw_a, iw_psi)
        return (terms @ coef).add_(const)

    @staticmethod
    def backward(ctx, grad):
        phi, mean, raw, tril, prec, resid, proj, sq_sum = ctx.saved_tensors
        log_diag = raw.diagonal(dim1=-2, dim2=-1)
        b, o, prior_var, num_data, iw_a, iw_psi = ctx.consts
        shrink = 1.0 / (prior_var * num_data)
        weighted = resid * prec  # R = r * pi, [B, O]
        g_mean = torch.addmm(mean, weighted.mT, phi, beta=shrink, alpha=-1.0 / b).mul_(grad)
        if o == 1:
            g_tril = torch.addmm(tril[0], phi.mT, proj * (prec / b), beta=shrink).unsqueeze(0)
        else:
            g_tril = (phi.mT @ proj).mul_((prec / b)[:, None, None]).add_(tril, alpha=shrink)
        g_tril.mul_(grad)
        g_raw = g_tril.tril(-1)
        g_raw.diagonal(dim1=-2, dim2=-1).copy_(
            (g_tril.diagonal(dim1=-2, dim2=-1) * log_diag.exp()).sub_(grad / num_data)
        )
        g_log_v = (prec * (sq_sum * (-0.5 / b) - 0.5 * iw_psi / num_data)).add_(0.5 + iw_a / num_data).mul_(grad)
        g_phi = g_y = None
        if ctx.needs_input_grad[0]:
            if o == 1:
                back = proj @ tril[0].mT * prec  # pi P L^T
            else:
                back = (torch.matmul(proj, tril.mT) * prec[:, None, None]).sum(0)  # sum_i pi_i P_i L_i^T
            g_phi = back.sub_(weighted @ mean).mul_(grad / b)
        if ctx.needs_input_grad[1]:
            g_y = weighted * (grad / b)
        return g_phi, g_y, g_mean, g_raw, g_log_v, None, None, None, None


def dense_regression_loss(phi, y, mean, raw, log_v, prior_var, num_data, iw_a=0.0, iw_psi=0.0):
    """The fused loss; same arguments and value as :func:`reference_loss`, one autograd node.

    Args:
        phi: ``[B, D]`` features.  y: ``[B, O]`` targets.  mean: ``[O, D]``.
        raw: ``[O, D, D]`` stored Cholesky factors (strict lower triangle, log-diagonal).
        log_v: ``[O]`` log noise variances.
        prior_var: ``s^2``.  num_data: ``N_data``.  iw_a, iw_psi: the inverse-Wishart
        log-prior ``-(a log v + psi / (2 v))`` (zeros when the noise is fixed).
    """
    return _DenseRegressionLoss.apply(phi, y, mean, raw, log_v, prior_var, num_data, iw_a, iw_psi)
