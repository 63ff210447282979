"""Fused heteroscedastic VBLL loss (dense ``q(W)``, diagonal ``q(U)``): one autograd node, hand-derived gradients.

The minibatch loss of :class:`~vitorch.models.last_layer.VBLLHeteroscedasticRegression`
with its default posteriors costs about a hundred small operations forward and
backward through autograd.  This module computes the same scalar,

    loss = (1/B) sum_n sum_i 1/2 [log 2 pi + mu_ni + e_ni (r_ni^2 + q_ni)] + (KL_W + KL_U) / N_data,

with ``r = y - phi M^T``, ``q_ni = ||L_i^T phi_n||^2`` (``S_i = L_i L_i^T``,
``L_i = tril(F_i, -1) + diag(exp(l_i))``), ``mu = phi U^T + c``,
``t = phi^2 exp(V)^T`` (``q(u_i) = N(U_i, diag(exp(V_i)))``) and ``e = exp(-mu + t / 2)``,
and returns its gradients.  With ``A = e (r^2 + q)``:

    d/dmu = (1 - A) / (2B),   d/dt = A / (4B),   d/dr = -r e / B (on y - phi M^T),
    d/dM  = -(r e)^T Phi / B + M / (s^2 N),     d/dL_i = Phi^T (P_i e_i) / B + L_i / (s^2 N),
    d/dU  = (d/dmu)^T Phi + U / (s_u^2 N),      d/dc = sum_n d/dmu,
    d/dV  = exp(V) ((d/dt)^T Phi^2 + 1 / (2 s_u^2 N)) - 1 / (2N),
    d/dPhi = -(r e / B) M + sum_i (e_i / B) P_i L_i^T + (d/dmu) U + 2 Phi (d/dt) exp(V).

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

_LOG_2PI = math.log(2 * math.pi)


def reference_loss(phi, y, mean, raw, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data) -> Tensor:
    """The loss by plain autograd (the specification); shapes as :func:`heteroscedastic_loss`."""
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
    def forward(ctx, phi, y, mean, raw, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data):
        b, o = y.shape
        d = phi.shape[-1]
        coef, one = _constants(b, o, d, num_data, prior_var, u_prior_var, phi.dtype, phi.device)
        tril = raw.tril(-1)  # [O, D, D]; its diagonal is overwritten with exp(l)
        torch.exp(raw.diagonal(dim1=-2, dim2=-1), out=tril.diagonal(dim1=-2, dim2=-1))
        u_var = u_log_var.exp()  # [O, D]
        resid = torch.addmm(y, phi, mean.mT, alpha=-1)  # [B, O]
        proj = (phi @ tril[0]).unsqueeze(0) if o == 1 else torch.matmul(phi, tril)  # [O, B, D]
        mu = torch.addmm(offset, phi, u_mean.mT)  # [B, O]
        phi_sq = phi * phi
        t = phi_sq @ u_var.mT  # [B, O]
        e = torch.exp(torch.add(t, mu, alpha=-2.0).mul_(0.5))  # exp(-mu + t/2)
        a = (proj * proj).sum(-1).mT.add_(resid * resid).mul_(e)  # A = e (r^2 + q), [B, O]
        u_norm = u_var.sum() + (u_mean * u_mean).sum()
        terms = torch.stack(
            [
                mu.sum(),
                a.sum(),
                (tril * tril).sum() + (mean * mean).sum(),
                raw.diagonal(dim1=-2, dim2=-1).sum(),
                u_norm,
                u_log_var.sum(),
                one,
            ]
        )
        ctx.save_for_backward(phi, mean, u_mean, tril, u_var, resid, proj, phi_sq, e, a)
        ctx.consts = (b, o, prior_var, u_prior_var, num_data)
        return torch.dot(terms, coef)

    @staticmethod
    def backward(ctx, grad):
        # Gradients for a unit upstream gradient, scaled by ``grad`` in one operation at the end.
        phi, mean, u_mean, tril, u_var, resid, proj, phi_sq, e, a = ctx.saved_tensors
        b, o, prior_var, u_prior_var, num_data = ctx.consts
        re = resid * e  # [B, O]
        g_mu = torch.rsub(a, 1.0)  # (1 - A), times 1 / (2B) below
        g_t = a  # A, times 1 / (4B) below
        g_mean = torch.addmm(mean, re.mT, phi, beta=1.0 / (prior_var * num_data), alpha=-1.0 / b)
        proj_e = proj * e.mT.unsqueeze(-1)  # e_i P_i, [O, B, D]
        g_raw = torch.matmul(phi.mT, proj_e).mul_(1.0 / b).add_(tril, alpha=1.0 / (prior_var * num_data))
        # d/dF = tril(d/dL, -1) + diag(diag(d/dL) exp(l) - 1/N): L's diagonal is exp(l)
        g_raw.tril_()
        g_raw.diagonal(dim1=-2, dim2=-1).mul_(tril.diagonal(dim1=-2, dim2=-1)).sub_(1.0 / num_data)
        g_u_mean = torch.addmm(u_mean, g_mu.mT, phi, beta=1.0 / (u_prior_var * num_data), alpha=0.5 / b)
        g_offset = g_mu.sum(0).mul_(0.5 / b)
        g_u_log_var = (g_t.mT @ phi_sq).mul_(0.25 / b).add_(0.5 / (u_prior_var * num_data))
        g_u_log_var.mul_(u_var).sub_(0.5 / num_data)
        grads = [g_mean, g_raw, g_u_mean, g_u_log_var, g_offset]
        g_phi = g_y = None
        if ctx.needs_input_grad[0]:
            back = torch.matmul(proj_e, tril.mT).sum(0)  # sum_i e_i P_i L_i^T, [B, D]
            back = torch.addmm(back, re, mean, alpha=-1.0)
            back = torch.addmm(back, g_mu, u_mean, alpha=0.5)  # (1 - A) U / 2, scaled by 1/B below
            g_phi = _phi_grad(back, phi, g_t, u_var, b)
            grads.append(g_phi)
        if ctx.needs_input_grad[1]:
            g_y = re / b
            grads.append(g_y)
        torch._foreach_mul_(grads, grad)
        return g_phi, g_y, g_mean, g_raw, g_u_mean, g_u_log_var, g_offset, None, None, None


def _phi_grad(back: Tensor, phi: Tensor, g_t: Tensor, u_var: Tensor, b: int) -> Tensor:
    """``(back + 2 Phi (A/4) exp(V)) / B``: the log-variance's variance term joins the rest."""
    return torch.addcmul(back, phi, g_t @ u_var, value=0.5).mul_(1.0 / b)


def heteroscedastic_loss(phi, y, mean, raw, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data):
    """The fused loss; same arguments and value as :func:`reference_loss`, one autograd node.

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        mean: ``[O, D]`` mean of ``q(W)``.
        raw: ``[O, D, D]`` stored Cholesky factors of ``q(W)`` (strict lower triangle, log-diagonal).
        u_mean: ``[O, D]`` mean of ``q(U)``.
        u_log_var: ``[O, D]`` log-variances of ``q(U)``.
        offset: ``[O]`` the log-variance offset ``c``.
        prior_var: ``s^2``.
        u_prior_var: ``s_u^2``.
        num_data: ``N_data``, which weighs the KL terms.
    """
    return _HeteroscedasticLoss.apply(phi, y, mean, raw, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data)
