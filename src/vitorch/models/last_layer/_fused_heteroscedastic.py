"""Fused heteroscedastic VBLL loss (dense ``q(W)``, diagonal ``q(U)``): one autograd node, hand-derived gradients.

The minibatch loss of :class:`~vitorch.models.last_layer.VBLLHeteroscedasticRegression`
with its default posteriors costs about a hundred small operations forward and
backward through autograd.  This module computes the same scalar,

    loss = (1/B) sum_n sum_i 1/2 [log 2 pi + mu_ni + e_ni (r_ni^2 + q_ni)] + (KL_W + KL_U) / N_data,

with ``r = y - phi M^T``, ``q_ni = ||L_i^T phi_n||^2`` (``S_i = L_i L_i^T``,
``L_i = tril(F_i, -1) + diag(exp(l_i))``), ``mu = phi U^T + c``,
``t = phi^2 exp(V)^T`` (``q(u_i) = N(U_i, diag(exp(V_i)))``) and ``e = exp(-mu + t / 2)``,
and returns its gradients.  ``F`` and ``M`` arrive as the
:class:`~vitorch.models.last_layer.Dense` posterior's ``packed`` storage (layout in
:mod:`._packed`) and their gradient leaves as one tensor.  As in :mod:`._fused`, one
product gives ``Phi W_i = [P_i | Phi m_i]`` with ``W_i = [L_i | m_i]`` and ``P_i = Phi
L_i``; with ``E_i = [P_i | -r_i]`` (so ``r^2 + q`` is the squared norm of ``E``'s row),
``A = e (r^2 + q)`` and ``G_i = e_i E_i`` (rows scaled by ``e``):

    d/dmu = (1 - A) / (2B),   d/dt = A / (4B),
    d/dW_i = Phi^T G_i / B + W_i / (s^2 N)     (columns: d/dL_i, then d/dm_i),
    d/dU  = (d/dmu)^T Phi + U / (s_u^2 N),      d/dc = sum_n d/dmu,
    d/dV  = exp(V) ((d/dt)^T Phi^2 + 1 / (2 s_u^2 N)) - 1 / (2N),
    d/dPhi = sum_i G_i W_i^T / B + (d/dmu) U + 2 Phi (d/dt) exp(V),    d/dy = -(last column of G)^T / B.

:func:`reference_loss` is the readable autograd specification; the tests compare both,
forward and backward.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024) for the
    deterministic objective; Lázaro-Gredilla & Titsias, *Variational Heteroscedastic
    Gaussian Process Regression* (ICML 2011) for ``E exp(-l) = exp(-mu + t/2)``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ._fused import _constants as _dense_constants
from ._packed import unpack

_LOG_2PI = math.log(2 * math.pi)


def reference_loss(phi, y, packed, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data) -> Tensor:
    """The loss by plain autograd (the specification); shapes as :func:`heteroscedastic_loss`."""
    _, raw, mean, _ = unpack(packed, phi.shape[-1])
    log_diag = raw.diagonal(dim1=-2, dim2=-1)
    tril = raw.tril(-1) + torch.diag_embed(log_diag.exp())
    resid = y - phi @ mean.mT
    quad = torch.matmul(phi, tril).pow(2).sum(-1).mT
    mu = phi @ u_mean.mT + offset
    t = phi.pow(2) @ u_log_var.exp().mT
    expected = -0.5 * (_LOG_2PI + mu + torch.exp(-mu + 0.5 * t) * (resid.pow(2) + quad)).sum(-1)
    o, d = mean.shape
    kl_w = 0.5 * ((tril.pow(2).sum() + mean.pow(2).sum()) / prior_var - 2 * log_diag.sum())
    kl_u = 0.5 * ((u_log_var.exp().sum() + u_mean.pow(2).sum()) / u_prior_var - u_log_var.sum())
    const = 0.5 * o * d * (math.log(prior_var) + math.log(u_prior_var) - 2)
    return -(expected.mean() - (kl_w + kl_u + const) / num_data)


@functools.lru_cache(maxsize=64)
def _constants(b, o, d, num_data, prior_var, u_prior_var, dtype, device) -> tuple[Tensor, Tensor]:
    """``coef [7]`` weighing ``[sum mu, sum A, ||L||^2 + ||M||^2, sum l, sum exp(V) + ||U||^2, sum V, 1]``.

    Cached with the unit tensor, as in :mod:`._fused`: a Python number in a tensor
    expression costs a wrap and a cast per call.
    """
    const = 0.5 * o * _LOG_2PI + 0.5 * o * d * (math.log(prior_var) + math.log(u_prior_var) - 2) / num_data
    values = [0.5 / b, 0.5 / b, 0.5 / (prior_var * num_data), -1.0 / num_data, 0.5 / (u_prior_var * num_data)]
    values += [-0.5 / num_data, const]
    return torch.tensor(values, dtype=dtype, device=device), torch.ones((), dtype=dtype, device=device)


class _HeteroscedasticLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi, y, packed, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data):
        b, o = y.shape
        d = phi.shape[-1]
        coef, one = _constants(b, o, d, num_data, prior_var, u_prior_var, phi.dtype, phi.device)
        # the two [D, D+1] masks of the homoscedastic loss (keep W's blocks; and their gradients)
        keep, grad_keep = _dense_constants(b, o, d, num_data, prior_var, 0.0, 0.0, phi.dtype, phi.device)[-2:]
        matrix = packed[:, : d * (d + 1)].view(o, d, d + 1)  # [F | m] (layout: ._packed)
        log_diag = matrix.diagonal(dim1=-2, dim2=-1)
        work = matrix * keep  # W = [L | m], [O, D, D+1]; its diagonal becomes exp(l)
        torch.exp(log_diag, out=work.diagonal(dim1=-2, dim2=-1))
        err = torch.bmm(phi.expand(o, b, d), work)  # [P | Phi m], then E = [P | -r]
        err[..., d].sub_(y.mT)
        u_var = u_log_var.exp()  # [O, D]
        mu = torch.addmm(offset, phi, u_mean.mT)  # [B, O]
        phi_sq = phi * phi
        t = phi_sq @ u_var.mT  # [B, O]
        e = torch.exp(torch.add(t, mu, alpha=-2.0).mul_(0.5))  # exp(-mu + t/2)
        a = (err * err).sum(-1).mT.mul_(e)  # A = e (r^2 + q), [B, O]
        u_norm = u_var.sum() + (u_mean * u_mean).sum()
        flat = work.view(-1)
        terms = torch.stack([mu.sum(), a.sum(), torch.dot(flat, flat), log_diag.sum(), u_norm, u_log_var.sum(), one])
        ctx.save_for_backward(phi, u_mean, work, err, u_var, phi_sq, e, a)
        ctx.consts = (b, o, d, packed.shape[-1], prior_var, u_prior_var, num_data, grad_keep)
        return torch.dot(terms, coef)

    @staticmethod
    def backward(ctx, grad):
        # Gradients for a unit upstream gradient, scaled by ``grad`` in one operation at the end.
        phi, u_mean, work, err, u_var, phi_sq, e, a = ctx.saved_tensors
        b, o, d, size, prior_var, u_prior_var, num_data, grad_keep = ctx.consts
        g_err = err * e.mT.unsqueeze(-1)  # G = e E, [O, B, D+1]
        g_mu = torch.rsub(a, 1.0)  # (1 - A), times 1 / (2B) below
        g_t = a  # A, times 1 / (4B) below
        g_packed = torch.empty((o, size), dtype=phi.dtype, device=phi.device)
        g_matrix = g_packed[:, : d * (d + 1)].view(o, d, d + 1)
        torch.baddbmm(
            work, phi.mT.expand(o, d, b), g_err, beta=1.0 / (prior_var * num_data), alpha=1.0 / b, out=g_matrix
        )
        # d/dF = tril(d/dL, -1) + diag(diag(d/dL) exp(l) - 1/N): L's diagonal is exp(l);
        # the unused strict upper triangle (and any spare entry) gets a zero gradient
        g_matrix.mul_(grad_keep)
        g_matrix.diagonal(dim1=-2, dim2=-1).mul_(work.diagonal(dim1=-2, dim2=-1)).sub_(1.0 / num_data)
        if size > d * (d + 1):
            g_packed[:, d * (d + 1) :].zero_()
        g_u_mean = torch.addmm(u_mean, g_mu.mT, phi, beta=1.0 / (u_prior_var * num_data), alpha=0.5 / b)
        g_offset = g_mu.sum(0).mul_(0.5 / b)
        g_u_log_var = (g_t.mT @ phi_sq).mul_(0.25 / b).add_(0.5 / (u_prior_var * num_data))
        g_u_log_var.mul_(u_var).sub_(0.5 / num_data)
        grads = [g_packed, g_u_mean, g_u_log_var, g_offset]
        g_phi = g_y = None
        if ctx.needs_input_grad[0]:
            # sum_i G_i W_i^T = sum_i e_i P_i L_i^T - (r e) M, then (1 - A) U / 2; all scaled by 1/B below
            back = torch.mm(g_err[0], work[0].mT) if o == 1 else torch.matmul(g_err, work.mT).sum(0)
            back = torch.addmm(back, g_mu, u_mean, alpha=0.5)
            g_phi = _phi_grad(back, phi, g_t, u_var, b)
            grads.append(g_phi)
        if ctx.needs_input_grad[1]:
            g_y = g_err[..., d].mT.mul(-1.0 / b)  # r e / B
            grads.append(g_y)
        torch._foreach_mul_(grads, grad)
        return g_phi, g_y, g_packed, g_u_mean, g_u_log_var, g_offset, None, None, None


def _phi_grad(back: Tensor, phi: Tensor, g_t: Tensor, u_var: Tensor, b: int) -> Tensor:
    """``(back + 2 Phi (A/4) exp(V)) / B``: the log-variance's variance term joins the rest."""
    return torch.addcmul(back, phi, g_t @ u_var, value=0.5).mul_(1.0 / b)


def heteroscedastic_loss(phi, y, packed, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data):
    """The fused loss; same arguments and value as :func:`reference_loss`, one autograd node.

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        packed: ``[O, D*(D+1) + S]``, the storage of ``q(W)``'s
            :class:`~vitorch.models.last_layer.Dense` posterior: per row ``[F | m]``,
            the stored Cholesky factor (strict lower triangle, log-diagonal) beside the
            mean column, then ``S`` unused spare entries (:mod:`._packed`).
        u_mean: ``[O, D]`` mean of ``q(U)``.
        u_log_var: ``[O, D]`` log-variances of ``q(U)``.
        offset: ``[O]`` the log-variance offset ``c``.
        prior_var: ``s^2``.
        u_prior_var: ``s_u^2``.
        num_data: ``N_data``, which weighs the KL terms.
    """
    return _HeteroscedasticLoss.apply(phi, y, packed, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data)
