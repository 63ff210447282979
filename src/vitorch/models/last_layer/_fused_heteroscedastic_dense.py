"""Fused heteroscedastic VBLL loss with dense ``q(W)`` and dense ``q(U)``: one autograd node.

The configuration of :class:`~vitorch.models.last_layer.VBLLHeteroscedasticRegression`
with ``noise_covariance=Dense``.  Both posteriors are :class:`~vitorch.models.last_layer.Dense`
and store, per output row, the matrix ``[F | m]`` (layout in :mod:`._packed`); the
log-variance posterior keeps the offset ``c`` in its one spare entry, so the head's
optimizer visits two tensors.  The scalar is the loss of :mod:`._fused_heteroscedastic`,

    loss = (1/B) sum_n sum_i 1/2 [log 2 pi + mu_ni + e_ni (r_ni^2 + q_ni)] + (KL_W + KL_U) / N_data,

now with ``t_ni = ||L^u_i^T phi_n||^2`` (``q(u_i) = N(u_i, L^u_i L^u_i^T)``).  The two
blocks ``W_i = [L_i | m_i]`` and ``W^u_i = [L^u_i | u_i]`` are stacked, so one batched
product gives ``Phi W_i = [P_i | Phi m_i]`` and ``Phi W^u_i = [P^u_i | mu_i - c_i]``
together.  With ``A = e (r^2 + q)``, ``E_i = [P_i | -r_i]`` and

    G_i   = e_i E_i / B,                          (the mean block, as before)
    G^u_i = [A_i P^u_i / 2 | (1 - A_i) / 2] / B,  (d/dP^u = 2 P^u d/dt with d/dt = A / (4B))

every gradient is a product with the stacked ``G = [G; G^u]``:

    d/dW_k  = Phi^T G_k + W_k / (s_k^2 N)         (s_k = s for W, s_u for W^u)
    d/dF_k  = tril(d/dW_k's factor block, -1) + diag(diag(...) exp(l_k) - 1 / N)
    d/dc    = sum_n (last column of G^u),   d/dPhi = sum_k G_k W_k^T,   d/dy = -(last column of G)^T.

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


def _factor(raw: Tensor) -> tuple[Tensor, Tensor]:
    log_diag = raw.diagonal(dim1=-2, dim2=-1)
    return raw.tril(-1) + torch.diag_embed(log_diag.exp()), log_diag


def reference_loss(phi, y, packed, noise_packed, prior_var, u_prior_var, num_data) -> Tensor:
    """The loss by plain autograd (the specification); arguments as :func:`heteroscedastic_dense_loss`."""
    d = phi.shape[-1]
    _, raw, mean, _ = unpack(packed, d)
    _, raw_u, u_mean, spare_u = unpack(noise_packed, d)
    tril, log_diag = _factor(raw)
    tril_u, log_diag_u = _factor(raw_u)
    resid = y - phi @ mean.mT
    quad = torch.matmul(phi, tril).pow(2).sum(-1).mT  # [B, O]
    mu = phi @ u_mean.mT + spare_u[:, 0]
    t = torch.matmul(phi, tril_u).pow(2).sum(-1).mT
    expected = -0.5 * (_LOG_2PI + mu + torch.exp(-mu + 0.5 * t) * (resid.pow(2) + quad)).sum(-1)
    o = mean.shape[0]
    kl_w = 0.5 * ((tril.pow(2).sum() + mean.pow(2).sum()) / prior_var - 2 * log_diag.sum())
    kl_u = 0.5 * ((tril_u.pow(2).sum() + u_mean.pow(2).sum()) / u_prior_var - 2 * log_diag_u.sum())
    const = 0.5 * o * d * (math.log(prior_var) + math.log(u_prior_var) - 2)
    return -(expected.mean() - (kl_w + kl_u + const) / num_data)


@functools.lru_cache(maxsize=64)
def _constants(b, o, d, num_data, prior_var, u_prior_var, dtype, device) -> tuple[Tensor, ...]:
    """Cached tensors: ``coef [4]`` weighing ``[sum (mu + A), KL's quadratic terms, sum l + sum l^u, 1]``,
    ``decay [2O, 1, 1]`` (the KL's ``1 / (s_k^2 N)`` per block), its half, and the two
    ``[D, D+1]`` masks.

    A Python number in a tensor expression costs a wrap and a cast per call (:mod:`._fused`).
    """
    const = 0.5 * o * _LOG_2PI + 0.5 * o * d * (math.log(prior_var) + math.log(u_prior_var) - 2) / num_data
    coef = torch.tensor([0.5 / b, 1.0, -1.0 / num_data, const], dtype=dtype, device=device)
    decay = torch.tensor([1.0 / (prior_var * num_data)] * o + [1.0 / (u_prior_var * num_data)] * o, dtype=dtype)
    decay = decay.to(device).view(2 * o, 1, 1)
    keep, grad_keep = _dense_constants(b, o, d, num_data, prior_var, 0.0, 0.0, dtype, device)[-2:]
    one = torch.ones((), dtype=dtype, device=device)
    return coef, decay, 0.5 * decay, keep, grad_keep, one


class _HeteroscedasticDenseLoss(torch.autograd.Function):
    # Per-datum quantities are kept as [O, B] (the products' layout), not [B, O]: no transposes.
    @staticmethod
    def forward(ctx, phi, y, packed, noise_packed, prior_var, u_prior_var, num_data):
        b, o = y.shape
        d = phi.shape[-1]
        size = d * (d + 1)
        consts = _constants(b, o, d, num_data, prior_var, u_prior_var, phi.dtype, phi.device)
        coef, decay, half_decay, keep, grad_keep, one = consts
        # the stacked stored blocks [F | m] (rows 0..O-1) and [F^u | u] (rows O..2O-1)
        stored = torch.cat([packed[:, :size], noise_packed[:, :size]]).view(2 * o, d, d + 1)
        log_diag = stored.diagonal(dim1=-2, dim2=-1)
        work = stored * keep  # [L | m] and [L^u | u]; the diagonals become exp(l)
        torch.exp(log_diag, out=work.diagonal(dim1=-2, dim2=-1))
        prod = torch.bmm(phi.expand(2 * o, b, d), work)  # [2O, B, D+1]
        err, pu = prod[:o], prod[o:]  # [P | Phi m] -> E = [P | -r]; [P^u | Phi u]
        err[..., d].sub_(y.mT)
        mu = pu[..., d] + noise_packed[:, size:]  # [O, B]
        p_u = pu[..., :d]
        t = (p_u * p_u).sum(-1)
        e = torch.exp(torch.add(t, mu, alpha=-2.0).mul_(0.5))  # exp(-mu + t/2)
        a = (err * err).sum(-1).mul_(e)  # A = e (r^2 + q)
        # (||W||^2 / s^2 + ||W^u||^2 / s_u^2) / (2N), one weighted sum over both blocks
        quad = (work * work).mul_(half_decay).sum()
        terms = torch.stack([torch.add(mu, a).sum(), quad, log_diag.sum(), one])
        ctx.save_for_backward(phi, work, prod, e, a)
        ctx.consts = (b, o, d, packed.shape[-1], num_data, decay, grad_keep)
        return torch.dot(terms, coef)

    @staticmethod
    def backward(ctx, grad):
        # Gradients for a unit upstream gradient, scaled by ``grad`` in one operation at the end.
        phi, work, prod, e, a = ctx.saved_tensors
        b, o, d, size_w, num_data, decay, grad_keep = ctx.consts
        size = d * (d + 1)
        g = torch.empty_like(prod)  # stacked G = [G; G^u], [2O, B, D+1], scaled by 1/B
        torch.mul(prod[:o], e.mul(1.0 / b).unsqueeze(-1), out=g[:o])
        half_a = a.mul(0.5 / b)
        torch.mul(prod[o:], half_a.unsqueeze(-1), out=g[o:])
        torch.sub(half_a, 0.5 / b, out=g[o:, :, d]).neg_()  # (1 - A) / (2B)
        g_matrix = torch.bmm(phi.mT.expand(2 * o, d, b), g).addcmul_(work, decay)
        # d/dF = tril(d/dL, -1) + diag(diag(d/dL) exp(l) - 1/N); unused storage gets zero
        g_matrix.mul_(grad_keep)
        g_matrix.diagonal(dim1=-2, dim2=-1).mul_(work.diagonal(dim1=-2, dim2=-1)).sub_(1.0 / num_data)
        g_flat = g_matrix.view(2 * o, size)
        g_offset = g[o:, :, d].sum(-1, keepdim=True)  # [O, 1]
        g_packed = g_flat[:o] if size_w == size else _pad(g_flat[:o], size_w - size)
        g_noise = torch.cat([g_flat[o:], g_offset], -1)
        grads = [g_packed, g_noise]
        g_phi = g_y = None
        if ctx.needs_input_grad[0]:
            g_phi = torch.mm(g[0], work[0].mT).addmm_(g[1], work[1].mT) if o == 1 else (g @ work.mT).sum(0)
            grads.append(g_phi)
        if ctx.needs_input_grad[1]:
            g_y = g[:o, :, d].mT.neg()  # e r / B
            grads.append(g_y)
        torch._foreach_mul_(grads, grad)
        return g_phi, g_y, g_packed, g_noise, None, None, None


def _pad(g: Tensor, spare: int) -> Tensor:
    # spare entries of the mean block's storage that this loss does not read: zero gradient
    return torch.cat([g, g.new_zeros(g.shape[0], spare)], -1)


def heteroscedastic_dense_loss(phi, y, packed, noise_packed, prior_var, u_prior_var, num_data):
    """The fused loss; same arguments and value as :func:`reference_loss`, one autograd node.

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        packed: ``[O, D*(D+1) + S]``, ``q(W)``'s :class:`~vitorch.models.last_layer.Dense`
            storage (per row ``[F | m]``; ``S`` spare entries, unread).
        noise_packed: ``[O, D*(D+1) + 1]``, ``q(U)``'s ``Dense`` storage with the offset
            ``c`` in the one spare entry.
        prior_var: ``s^2``, prior variance of each mean weight.
        u_prior_var: ``s_u^2``, prior variance of each log-variance weight.
        num_data: ``N_data``, which weighs the KL terms.
    """
    return _HeteroscedasticDenseLoss.apply(phi, y, packed, noise_packed, prior_var, u_prior_var, num_data)
