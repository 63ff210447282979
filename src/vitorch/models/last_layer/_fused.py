"""Fused VBLL regression loss for the dense (Cholesky) posterior: one autograd node, hand-derived gradients.

The minibatch loss of :class:`~vitorch.models.last_layer.VBLLRegression` costs about
forty small tensor operations forward and as many backward, which dominates a
training step of a small network on CPU.  This module computes the same scalar,

    loss = -(1/B) sum_n sum_i [-(r_ni^2 + ||L_i^T phi_n||^2) / (2 v_i) - log(v_i) / 2 - log(2 pi) / 2]
           + (KL(q || p) - log p(Sigma)) / N_data,

with ``r = y - phi M^T``, ``S_i = L_i L_i^T``, ``L_i = tril(F_i, -1) + diag(exp(l_i))`` where
``F_i`` is the stored factor and ``l_i`` its diagonal, and returns its gradients from
three matrix products.  ``F``, ``M`` and (when learned) ``log v`` arrive as one tensor,
the :class:`~vitorch.models.last_layer.Dense` posterior's ``packed`` storage (layout in
:mod:`._packed`), and their gradients leave as one.  With ``W_i = [L_i | m_i]`` (``D x
(D+1)``), one product gives ``Phi W_i = [P_i | Phi m_i]`` (``P_i = Phi L_i``); write
``E_i = [P_i | -r_i]``, ``pi_i = 1 / v_i`` and ``G_i = pi_i E_i / B``.  Then
``sum_n (r_ni^2 + ||P_ni||^2) = ||E_i||^2``, ``||L_i||^2 + ||m_i||^2 = ||W_i||^2`` and

    d/dW_i   = Phi^T G_i + W_i / (s^2 N_data)          (columns: d/dL_i, then d/dm_i)
    d/dF_i   = tril(d/dL_i, -1) + diag(diag(d/dL_i) exp(l_i) - 1 / N_data)
    d/dlog v = -(1/2) (pi ||E||^2 / B - 1) + (a - psi pi / 2) / N_data   (a, psi: IW prior)
    d/dPhi   = sum_i G_i W_i^T,      d/dy = -(last column of G)^T.

:func:`reference_loss` is the readable autograd specification; the tests compare
both, forward and backward, on random inputs.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ._packed import unpack

_LOG_2PI = math.log(2 * math.pi)


def reference_loss(phi, y, packed, log_v, prior_var, num_data, iw_a, iw_psi) -> Tensor:
    """The loss by plain autograd (the specification); arguments as :func:`dense_regression_loss`."""
    d = phi.shape[-1]
    _, raw, mean, spare = unpack(packed, d)
    log_v = spare[:, 0] if log_v is None else log_v
    log_diag = raw.diagonal(dim1=-2, dim2=-1)
    tril = raw.tril(-1) + torch.diag_embed(log_diag.exp())
    resid = y - phi @ mean.mT
    quad = torch.matmul(phi, tril).pow(2).sum(-1).mT
    expected = -0.5 * ((resid.pow(2) + quad) / log_v.exp() + log_v + _LOG_2PI).sum(-1)
    kl = 0.5 * ((tril.pow(2).sum((-2, -1)) + mean.pow(2).sum(-1)) / prior_var - 2 * log_diag.sum(-1))
    kl = kl.sum() + 0.5 * mean.shape[0] * d * (math.log(prior_var) - 1)
    log_prior = -(iw_a * log_v + 0.5 * iw_psi * (-log_v).exp()).sum()
    return -(expected.mean() + (log_prior - kl) / num_data)


@functools.lru_cache(maxsize=64)
def _constants(b, o, d, num_data, prior_var, iw_a, iw_psi, dtype, device) -> tuple[Tensor, ...]:
    """The loss's fixed numbers as tensors, made once per configuration.

    A Python number in a tensor expression is wrapped and cast on every call (two more
    operations in float32), so each number the loss adds or subtracts is a cached tensor:
    ``coef [5]`` weighs ``[sum log v, ||W||^2, sum log diag L, 1, sum_i pi_i c_i]``,
    ``one`` is the stacked unit, ``psi_half = psi / (2N)``, ``g_log_v = 1/2 + a/N`` (the
    noise gradient's constant), ``inv_n = 1 / N`` (the log-determinant's gradient) and
    ``inv_b = 1 / B``.  Two ``[D, D+1]`` masks pick ``W``'s blocks from ``[F | m]``:
    ``keep`` (strict lower triangle and the mean column) and ``grad_keep`` (the same and
    the diagonal).  A product with a mask replaces ``tril``, which on CPU splits even a
    64 x 64 matrix across threads (a parallel region per call, costly on a busy machine).
    """
    const = 0.5 * o * _LOG_2PI + 0.5 * o * d * (math.log(prior_var) - 1) / num_data
    values = [0.5 + iw_a / num_data, 0.5 / (prior_var * num_data), -1.0 / num_data, const, 1.0]
    coef = torch.tensor(values, dtype=dtype, device=device)
    scalars = [1.0, 0.5 * iw_psi / num_data, 0.5 + iw_a / num_data, 1.0 / num_data, 1.0 / b]
    grad_keep = torch.ones(d, d + 1, dtype=dtype, device=device).tril_()
    grad_keep[:, d] = 1
    keep = grad_keep.clone()
    keep.diagonal().zero_()
    return (coef, *torch.tensor(scalars, dtype=dtype, device=device).unbind(), keep, grad_keep)


class _DenseRegressionLoss(torch.autograd.Function):
    # Written for few tensor operations: on CPU a small head is bound by per-op overhead
    # (a few microseconds each), and every Python number in an expression costs more.
    @staticmethod
    def forward(ctx, phi, y, packed, log_v, prior_var, num_data, iw_a, iw_psi):
        b, o = y.shape
        d = phi.shape[-1]
        coef, one, psi_half, g_log_v_const, inv_n, inv_b, keep, grad_keep = _constants(
            b, o, d, num_data, prior_var, iw_a, iw_psi, phi.dtype, phi.device
        )
        size = d * (d + 1)  # the [F | m] block of each row (layout: ._packed); log v follows it
        matrix = packed[:, :size].view(o, d, d + 1)
        learned = log_v is None
        if learned:
            log_v = packed[:, size]
        log_diag = matrix.diagonal(dim1=-2, dim2=-1)  # l, [O, D]
        work = matrix * keep  # W = [L | m], [O, D, D+1]: a fresh tensor whose diagonal becomes exp(l)
        torch.exp(log_diag, out=work.diagonal(dim1=-2, dim2=-1))
        # E = [P | -r]: one product gives P = Phi L and Phi m; subtracting y turns the last
        # column into the negated residual
        err = torch.bmm(phi.expand(o, b, d), work)  # [O, B, D+1]
        err[..., d].sub_(y.mT)
        sq_sum = (err * err).sum((1, 2))  # [O]: sum_n r^2 + Q
        prec = log_v.neg().exp_()  # [O]
        # per output: c_i = (sum_n r^2 + Q) / (2B) + psi / (2N), the coefficient of pi_i in
        # the loss and, times -pi_i, the data part of d loss / d log v_i
        scaled = torch.add(psi_half, sq_sum, alpha=0.5 / b)
        flat = work.view(-1)
        terms = torch.stack([log_v.sum(), torch.dot(flat, flat), log_diag.sum(), one, torch.dot(scaled, prec)])
        ctx.save_for_backward(phi, work, err, prec, scaled)
        ctx.consts = (o, d, packed.shape[-1], learned, prior_var, num_data, g_log_v_const, inv_n, inv_b, grad_keep)
        return torch.dot(terms, coef)

    @staticmethod
    def backward(ctx, grad):
        # Gradients for a unit upstream gradient, scaled by ``grad`` in one operation at the end;
        # each block of the packed gradient is written in place into its view.
        phi, work, err, prec, scaled = ctx.saved_tensors
        o, d, size, learned, prior_var, num_data, g_log_v_const, inv_n, inv_b, grad_keep = ctx.consts
        b = phi.shape[0]
        g_err = err * (prec * inv_b).view(o, 1, 1)  # G = pi E / B
        g_packed = torch.empty((o, size), dtype=phi.dtype, device=phi.device)
        g_matrix = g_packed[:, : d * (d + 1)].view(o, d, d + 1)
        torch.baddbmm(work, phi.mT.expand(o, d, b), g_err, beta=1.0 / (prior_var * num_data), out=g_matrix)
        # d/dF = tril(d/dL, -1) + diag(diag(d/dL) exp(l) - 1/N): L's diagonal is exp(l);
        # the unused strict upper triangle gets a zero gradient
        g_matrix.mul_(grad_keep)
        g_matrix.diagonal(dim1=-2, dim2=-1).mul_(work.diagonal(dim1=-2, dim2=-1)).sub_(inv_n)
        g_log_v = None
        spare = size - d * (d + 1)
        if learned:
            torch.addcmul(g_log_v_const, prec, scaled, value=-1, out=g_packed[:, d * (d + 1)])
            if spare > 1:
                g_packed[:, d * (d + 1) + 1 :].zero_()
        else:
            if spare:
                g_packed[:, d * (d + 1) :].zero_()
            if ctx.needs_input_grad[3]:
                g_log_v = torch.addcmul(g_log_v_const, prec, scaled, value=-1)
        grads = [g_packed] + ([g_log_v] if g_log_v is not None else [])
        g_phi = g_y = None
        if ctx.needs_input_grad[0]:
            g_phi = torch.mm(g_err[0], work[0].mT) if o == 1 else torch.matmul(g_err, work.mT).sum(0)
            grads.append(g_phi)
        if ctx.needs_input_grad[1]:
            g_y = g_err[..., d].mT.neg()
            grads.append(g_y)
        torch._foreach_mul_(grads, grad)
        return g_phi, g_y, g_packed, g_log_v, None, None, None, None


def dense_regression_loss(phi, y, packed, log_v, prior_var, num_data, iw_a=0.0, iw_psi=0.0):
    """The fused loss; same arguments and value as :func:`reference_loss`, one autograd node.

    Args:
        phi: ``[B, D]`` features.  y: ``[B, O]`` targets.
        packed: ``[O, D*(D+1) + S]``, the storage of
            :class:`~vitorch.models.last_layer.Dense`: per row ``[F | m]`` (the stored
            Cholesky factor, strict lower triangle and log-diagonal, beside the mean
            column), then ``S`` spare entries (:mod:`._packed`).
        log_v: ``[O]`` log noise variances, or ``None`` when they are the first spare
            entry of each row of ``packed`` (learned with the weights).
        prior_var: ``s^2``.  num_data: ``N_data``.  iw_a, iw_psi: the inverse-Wishart
        log-prior ``-(a log v + psi / (2 v))`` (zeros when the noise is fixed).
    """
    return _DenseRegressionLoss.apply(phi, y, packed, log_v, prior_var, num_data, iw_a, iw_psi)
