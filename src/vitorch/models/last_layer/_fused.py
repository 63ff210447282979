"""Fused VBLL regression loss for the dense (Cholesky) posterior: one autograd node, hand-derived gradients.

The minibatch loss of :class:`~vitorch.models.last_layer.VBLLRegression` costs about
forty small tensor operations forward and as many backward, which dominates a
training step of a small network on CPU.  This module computes the same scalar,

    loss = -(1/B) sum_n sum_i [-(r_ni^2 + ||L_i^T phi_n||^2) / (2 v_i) - log(v_i) / 2 - log(2 pi) / 2]
           + (KL(q || p) - log p(Sigma)) / N_data,

with ``r = y - phi M^T``, ``S_i = L_i L_i^T``, ``L_i = tril(F_i, -1) + diag(exp(l_i))`` where
``F_i`` is the stored ``raw`` factor and ``l_i`` its diagonal,
and returns its gradients from a dozen matrix products.  ``M``, ``F`` and (when
learned) ``log v`` arrive as one tensor, the :class:`~vitorch.models.last_layer.Dense`
posterior's ``packed`` storage, and their gradients leave as one, written block by
block: the optimizer then updates a single tensor for the whole head.  With ``P_i = Phi L_i``,
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

import functools
import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def unpack(packed: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Views ``(raw [O, D, D], mean [O, D], spare [O, S])`` of the dense posterior's ``packed [O, D*D + D + S]``."""
    o, dd = packed.shape[0], d * d
    return packed[:, :dd].view(o, d, d), packed[:, dd : dd + d], packed[:, dd + d :]


def reference_loss(phi, y, packed, log_v, prior_var, num_data, iw_a, iw_psi) -> Tensor:
    """The loss by plain autograd (the specification); arguments as :func:`dense_regression_loss`."""
    d = phi.shape[-1]
    raw, mean, spare = unpack(packed, d)
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
    ``coef [5]`` weighs ``[sum log v, ||L||^2 + ||M||^2, sum log diag L, 1, sum_i pi_i c_i]``,
    ``one`` is the stacked unit, ``psi_half = psi / (2N)``, ``g_log_v = 1/2 + a/N`` (the
    noise gradient's constant) and ``inv_n = 1 / N`` (the log-determinant's gradient).
    The masks of the strict lower triangle and of the lower triangle with the diagonal
    replace ``tril``, which on CPU splits even a 64 x 64 matrix across threads (a
    parallel region per call, costly on a busy machine); a product with a mask does not.
    """
    const = 0.5 * o * _LOG_2PI + 0.5 * o * d * (math.log(prior_var) - 1) / num_data
    values = [0.5 + iw_a / num_data, 0.5 / (prior_var * num_data), -1.0 / num_data, const, 1.0]
    coef = torch.tensor(values, dtype=dtype, device=device)
    scalars = [1.0, 0.5 * iw_psi / num_data, 0.5 + iw_a / num_data, 1.0 / num_data]
    lower = torch.ones(d, d, dtype=dtype, device=device).tril_()
    return (coef, *torch.tensor(scalars, dtype=dtype, device=device).unbind(), lower.tril(-1), lower)


class _DenseRegressionLoss(torch.autograd.Function):
    # Written for few tensor operations: on CPU a small head is bound by per-op overhead
    # (a few microseconds each), and every Python number in an expression costs more.
    @staticmethod
    def forward(ctx, phi, y, packed, log_v, prior_var, num_data, iw_a, iw_psi):
        b, o = y.shape
        d = phi.shape[-1]
        coef, one, psi_half, g_log_v_const, inv_n, strict, lower = _constants(
            b, o, d, num_data, prior_var, iw_a, iw_psi, phi.dtype, phi.device
        )
        raw, mean, spare = unpack(packed, d)
        learned = log_v is None
        if learned:
            log_v = spare[:, 0]
        raw_diag = raw.diagonal(dim1=-2, dim2=-1)
        tril = raw * strict  # [O, D, D], a fresh tensor whose diagonal is overwritten with exp(l)
        torch.exp(raw_diag, out=tril.diagonal(dim1=-2, dim2=-1))
        prec = log_v.neg().exp_()  # [O]
        resid = torch.addmm(y, phi, mean.mT, alpha=-1)  # [B, O]
        proj = phi @ tril[0] if o == 1 else torch.matmul(phi, tril)  # [B, D] or [O, B, D]
        sq_sum = (resid * resid).sum(0) + (proj * proj).sum((-2, -1))  # [O]
        # per output: c_i = (sum_n r^2 + Q) / (2B) + psi / (2N), the coefficient of pi_i in
        # the loss and, times -pi_i, the data part of d loss / d log v_i
        scaled = torch.add(psi_half, sq_sum, alpha=0.5 / b)
        sq_norm = (tril * tril).sum() + (mean * mean).sum()
        terms = torch.stack([log_v.sum(), sq_norm, raw_diag.sum(), one, torch.dot(scaled, prec)])
        ctx.save_for_backward(phi, packed, tril, prec, resid, proj, scaled)
        ctx.consts = (b, o, d, learned, prior_var, num_data, g_log_v_const, inv_n, lower)
        return torch.dot(terms, coef)

    @staticmethod
    def backward(ctx, grad):
        # Gradients for a unit upstream gradient, scaled by ``grad`` in one operation at the end.
        # Each block of the packed gradient is written in place into its view.
        phi, packed, tril, prec, resid, proj, scaled = ctx.saved_tensors
        b, o, d, learned, prior_var, num_data, g_log_v_const, inv_n, lower = ctx.consts
        mean = unpack(packed, d)[1]
        g_packed = torch.empty_like(packed)
        g_raw, g_mean, g_spare = unpack(g_packed, d)
        shrink = 1.0 / (prior_var * num_data)
        weighted = resid * prec  # R = r * pi, [B, O]
        torch.addmm(mean, weighted.mT, phi, beta=shrink, alpha=-1.0 / b, out=g_mean)
        if o == 1:
            proj_prec = proj * prec  # pi P, [B, D]
            torch.addmm(tril[0], phi.mT, proj_prec, beta=shrink, alpha=1.0 / b, out=g_raw[0])
        else:
            proj_prec = proj * prec[:, None, None]  # pi_i P_i, [O, B, D]
            g_raw.copy_(phi.mT @ proj_prec).mul_(1.0 / b).add_(tril, alpha=shrink)
        # d/dF = tril(d/dL, -1) + diag(diag(d/dL) exp(l) - 1/N): L's diagonal is exp(l);
        # the unused strict upper triangle gets a zero gradient
        g_raw.mul_(lower)
        g_raw.diagonal(dim1=-2, dim2=-1).mul_(tril.diagonal(dim1=-2, dim2=-1)).sub_(inv_n)
        g_log_v = None
        if learned:
            torch.addcmul(g_log_v_const, prec, scaled, value=-1, out=g_spare[:, 0])
            if g_spare.shape[-1] > 1:
                g_spare[:, 1:].zero_()
        else:
            g_spare.zero_()
            if ctx.needs_input_grad[3]:
                g_log_v = torch.addcmul(g_log_v_const, prec, scaled, value=-1)
        grads = [g_packed] + ([g_log_v] if g_log_v is not None else [])
        g_phi = g_y = None
        if ctx.needs_input_grad[0]:
            # -(1/B) (R M - sum_i pi_i P_i L_i^T)
            back = torch.mm(proj_prec, tril[0].mT) if o == 1 else torch.matmul(proj_prec, tril.mT).sum(0)
            g_phi = torch.addmm(back, weighted, mean, beta=1.0 / b, alpha=-1.0 / b)
            grads.append(g_phi)
        if ctx.needs_input_grad[1]:
            g_y = torch.mul(weighted, 1.0 / b)
            grads.append(g_y)
        torch._foreach_mul_(grads, grad)
        return g_phi, g_y, g_packed, g_log_v, None, None, None, None


def dense_regression_loss(phi, y, packed, log_v, prior_var, num_data, iw_a=0.0, iw_psi=0.0):
    """The fused loss; same arguments and value as :func:`reference_loss`, one autograd node.

    Args:
        phi: ``[B, D]`` features.  y: ``[B, O]`` targets.
        packed: ``[O, D*D + D + S]``, the storage of
            :class:`~vitorch.models.last_layer.Dense`: per row the ``D x D`` stored
            Cholesky factor (strict lower triangle, log-diagonal), the mean ``[D]``, and
            ``S`` spare entries.
        log_v: ``[O]`` log noise variances, or ``None`` when they are the first spare
            entry of each row of ``packed`` (learned with the weights).
        prior_var: ``s^2``.  num_data: ``N_data``.  iw_a, iw_psi: the inverse-Wishart
        log-prior ``-(a log v + psi / (2 v))`` (zeros when the noise is fixed).
    """
    return _DenseRegressionLoss.apply(phi, y, packed, log_v, prior_var, num_data, iw_a, iw_psi)
