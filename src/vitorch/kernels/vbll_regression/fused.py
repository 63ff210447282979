"""VBLL regression bounds as single autograd nodes with hand-derived gradients (the fused-torch backend).

Each Function returns what `.reference`'s ``*_bound`` functions return, ``(bound [B],
loss [])`` with ``bound = expected_log_lik - penalty / N`` and ``loss = -mean(bound)``, for
``q(W)`` with a Cholesky factor of the covariance (``"scale_tril"``).  A training step of a
small head is bound by per-operation overhead, and autograd through the reference takes
some forty small operations forward and as many backward; these take a handful, and a
step that back-propagates ``loss`` alone (``bound`` is reported detached) scales every
datum alike, which the backward exploits.

The factor ``L_i = tril(R_i, -1) + diag(exp(l_i))`` (``R_i`` the stored raw factor, ``l_i`` its
diagonal) and the mean enter `RegressionBound` apart, as the model stores them, and
come back as separate gradients; the heteroscedastic Functions pack them here, per call, into
``W_i = [L_i | m_i]`` (``D x (D+1)``): one product then gives ``Phi W_i = [P_i | Phi m_i]``
with ``P_i = Phi L_i``, and one product ``Phi^T G_i`` returns both blocks' gradients.
With ``E_i = [P_i | -r_i]`` (``r = y - Phi M^T``) the squared norm of row ``n`` of ``E_i``
is ``r_ni^2 + phi_n^T S_i phi_n``, and ``||W_i||^2 = ||L_i||_F^2 + ||m_i||^2``.  For upstream
gradients ``g [B]`` (of the expected log-likelihood) and ``h`` (of the penalty), with
``w_ni`` the derivative of ``expected_log_lik_n`` by ``||E_in||^2`` times ``2`` (from the
outputs' gradients, ``g = g_bound - g_loss / B`` and ``h = (g_loss - sum_n g_bound_n) / N``):

    G_i     = diag(g * w_i) E_i                 (rows scaled)
    d/dW_i  = Phi^T G_i + h W_i / s^2          (columns: d/dL_i, then d/dm_i)
    d/dR_i  = tril(d/dL_i, -1) + diag(diag(d/dL_i) exp(l_i) - h)
    d/dPhi  = sum_i G_i W_i^T (+ the log-variance's terms),   d/dy = -(last column of G)^T.

Homoscedastic: ``w_ni = -1/v_i``.  Heteroscedastic (``e = exp(-mu + t/2)``, ``A = e ||E||^2``):
``w = -e``, ``d/dmu = g (A - 1) / 2`` and ``d/dt = -g A / 4``; with a dense ``q(U)`` its
block ``[L^u_i | u_i]`` is stacked under ``W`` and ``d/dP^u = 2 P^u d/dt``.  The code
carries ``gn = -g`` (positive for a loss being minimized), so that ``G`` comes out of the
products with its sign and needs no negation.

The prior variances and ``N`` are Python numbers: each configuration's constants (the
penalty's coefficients, masks) are made once as tensors and cached, so that no Python
number is wrapped into a tensor on every call.  Tested against `.reference` for values and
gradients (``gradcheck`` in float64).

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024);
    Lázaro-Gredilla & Titsias, *Variational Heteroscedastic Gaussian Process Regression*
    (ICML 2011) for ``E exp(-l) = exp(-mu + t/2)``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["RegressionBound", "HeteroscedasticBound", "HeteroscedasticDenseBound"]

_LOG_2PI = math.log(2 * math.pi)


def _masks(d: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``keep [D, D+1]``: ones on the strict lower triangle and the mean column, the entries of
    ``[R | m]`` that ``W`` keeps (its diagonal is then written with ``exp(l)``); ``lower [D, D]``:
    the lower triangle, the entries of ``R`` that are read (and get a gradient).  A product with
    a cached mask stands in for ``tril``, which on CPU opens a parallel region even for small
    matrices."""
    lower = torch.ones(d, d, dtype=dtype, device=device).tril_()
    keep = torch.cat([lower.tril(-1), torch.ones(d, 1, dtype=dtype, device=device)], -1)
    return keep, lower


def _tensors(dtype: torch.dtype, device: torch.device, *values) -> tuple[Tensor, ...]:
    return tuple(torch.tensor(v, dtype=dtype, device=device) for v in values)


@functools.lru_cache(maxsize=64)
def _regression_consts(o, d, prior_var, num_data, wishart_a, wishart_psi, dtype, device) -> tuple[Tensor, ...]:
    """``(strict, lower, coef, one, c0, inv_var, inv_n, g_log_v0, psi_half)``: the masks of the strict and
    the full lower triangle ``[D, D]``; ``penalty / N = coef . [||L||_F^2, ||m||^2, sum l, sum log v, sum 1/v,
    1]``; and, for the backward of ``loss`` alone, ``1 / N``, ``1/2 + a / N`` and ``psi / (2N)``."""
    coef = [
        0.5 / prior_var,
        0.5 / prior_var,
        -1.0,
        wishart_a,
        0.5 * wishart_psi,
        0.5 * o * d * (math.log(prior_var) - 1),
    ]
    coef = [c / num_data for c in coef]
    lower = torch.ones(d, d, dtype=dtype, device=device).tril_()
    values = (coef, 1.0, -0.5 * o * _LOG_2PI, 1.0 / prior_var, 1.0 / num_data)
    values += (0.5 + wishart_a / num_data, 0.5 * wishart_psi / num_data)
    return (lower.tril(-1), lower, *_tensors(dtype, device, *values))


@functools.lru_cache(maxsize=64)
def _heteroscedastic_consts(o, d, prior_var, u_prior_var, num_data, dtype, device) -> tuple[Tensor, ...]:
    """``(keep, lower, coef, one, c0, inv_var, inv_u_var)``; ``penalty / N = coef . [||W||^2, sum l,
    sum exp(V), ||U||^2, sum V, 1]``."""
    const = 0.5 * o * d * (math.log(prior_var) + math.log(u_prior_var) - 2)
    coef = [0.5 / prior_var, -1.0, 0.5 / u_prior_var, 0.5 / u_prior_var, -0.5, const]
    coef = [c / num_data for c in coef]
    values = (coef, 1.0, -0.5 * o * _LOG_2PI, 1.0 / prior_var, 1.0 / u_prior_var)
    return (*_masks(d, dtype, device), *_tensors(dtype, device, *values))


@functools.lru_cache(maxsize=64)
def _heteroscedastic_dense_consts(o, d, prior_var, u_prior_var, num_data, dtype, device) -> tuple[Tensor, ...]:
    """``(keep, lower, coef, one, c0, decay)``; ``penalty / N = coef . [sum_k ||W_k||^2 / s_k^2, sum l
    + sum l^u, 1]``; ``decay [2O, 1, 1]``: ``1 / s^2`` for the ``O`` blocks of ``W``, then
    ``1 / s_u^2`` for those of ``U``."""
    const = 0.5 * o * d * (math.log(prior_var) + math.log(u_prior_var) - 2)
    coef = [0.5 / num_data, -1.0 / num_data, const / num_data]
    decay = torch.tensor([1.0 / prior_var] * o + [1.0 / u_prior_var] * o, dtype=dtype, device=device)
    return (
        *_masks(d, dtype, device),
        *_tensors(dtype, device, coef, 1.0, -0.5 * o * _LOG_2PI),
        decay.view(2 * o, 1, 1),
    )


def _pack(raw: Tensor, mean: Tensor, keep: Tensor) -> Tensor:
    """``W = [L | m]``, ``[O, D, D+1]``, a fresh tensor, from the raw factor ``R [O, D, D]`` and the mean."""
    work = torch.cat([raw, mean.unsqueeze(-1)], -1).mul_(keep)
    torch.exp(raw.diagonal(dim1=-2, dim2=-1), out=work.diagonal(dim1=-2, dim2=-1))
    return work


def _outputs(expected: Tensor, penalty_over_n: Tensor) -> tuple[Tensor, Tensor]:
    """``(bound, loss)`` from the expected log-likelihoods and ``penalty / N``."""
    # 1/B as an alpha: a Python number in a tensor expression would be wrapped into a tensor
    return torch.sub(expected, penalty_over_n), torch.sub(penalty_over_n, expected.sum(), alpha=1.0 / len(expected))


def _upstream(g_bound: Tensor | None, g_loss: Tensor | None, b: int, num_data: int) -> tuple[Tensor, Tensor]:
    """``(gn, h)``: minus the gradient by ``expected_log_lik`` and the gradient by the penalty.

    ``gn`` is ``[B]``, or 0-d when every datum has the same (``loss`` alone back-propagated).
    """
    if g_bound is None:
        return g_loss * (1.0 / b), g_loss * (1.0 / num_data)
    total = g_bound.sum()
    if g_loss is None:
        return g_bound.neg(), total * (-1.0 / num_data)
    return g_loss / b - g_bound, (g_loss - total) / num_data


def _unpack_grad(g_work: Tensor, work: Tensor, lower: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``d/dW [O, D, D+1]`` -> ``(d/dR [O, D, D], d/dmean [O, D])``.

    ``h`` is the penalty's upstream gradient: the KL's ``-log|L|`` gives ``-h`` per log-diagonal entry.
    """
    d = work.shape[-2]
    g_raw = g_work[..., :d] * lower
    g_raw.diagonal(dim1=-2, dim2=-1).mul_(work.diagonal(dim1=-2, dim2=-1)).sub_(h)
    return g_raw, g_work[..., d].contiguous()


def _phi_grad(g: Tensor, work: Tensor) -> Tensor:
    """``sum_i G_i W_i^T``, ``[B, D]``."""
    if g.shape[0] == 1:
        return torch.mm(g[0], work[0].mT)
    if g.shape[0] == 2:
        return torch.mm(g[0], work[0].mT).addmm_(g[1], work[1].mT)
    return torch.matmul(g, work.mT).sum(0)


class RegressionBound(torch.autograd.Function):
    """Homoscedastic bound, dense ``q(W)``: ``(bound [B], loss [])`` as `.reference.regression_bound`.

    Inputs: ``phi [B, D]``, ``y [B, O]``, ``mean [O, D]``, ``raw [O, D, D]`` (the raw factor of
    `.reference.RowCovariance`), ``log_v [O]``, and the numbers ``prior_var``,
    ``num_data``, ``wishart_a``, ``wishart_psi``.  The factor and the mean enter apart (no
    packing): ``P_i = Phi L_i`` and ``r = y - Phi M^T`` are separate products, and their
    gradients come back as separate tensors, ``d/dL_i = Phi^T G_i + h L_i / s^2`` and
    ``d/dm_i = -Phi^T (g' r_i) + h m_i / s^2`` with ``G_i = diag(g') P_i``, ``g'_n = -g_n / v_i``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1.
    """

    @staticmethod
    def forward(ctx, phi, y, mean, raw, log_v, prior_var, num_data, wishart_a, wishart_psi):
        b, o = y.shape
        d = phi.shape[-1]
        consts = _regression_consts(o, d, prior_var, num_data, wishart_a, wishart_psi, phi.dtype, phi.device)
        strict, lower, coef, one, c0 = consts[:5]
        log_diag = raw.diagonal(dim1=-2, dim2=-1)
        tril = raw * strict  # L: the strict lower triangle, then exp(l) on the diagonal
        torch.exp(log_diag, out=tril.diagonal(dim1=-2, dim2=-1))
        proj = torch.bmm(phi.expand(o, b, d), tril)  # P_i = Phi L_i, [O, B, D]
        resid = torch.addmm(y, phi, mean.mT, alpha=-1.0)  # r = y - Phi M^T, [B, O]
        sq = torch.addcmul((proj * proj).sum(-1).mT, resid, resid)  # r^2 + phi^T S phi, [B, O]
        prec = log_v.neg().exp_()  # [O]
        log_v_sum = log_v.sum()
        expected = torch.addmv(torch.add(c0, log_v_sum, alpha=-0.5), sq, prec, alpha=-0.5)
        flat, m_flat = tril.view(-1), mean.reshape(-1)
        terms = [torch.dot(flat, flat), torch.dot(m_flat, m_flat), log_diag.sum(), log_v_sum, prec.sum(), one]
        ctx.save_for_backward(phi, mean, tril, proj, resid, sq, prec)
        ctx.consts = (prior_var, num_data, wishart_a, wishart_psi, consts)
        ctx.set_materialize_grads(False)
        return _outputs(expected, torch.dot(torch.stack(terms), coef))

    @staticmethod
    def backward(ctx, g_bound, g_loss):
        if g_bound is None and g_loss is None:
            return (None, None, None, None, None, None, None, None, None)
        if g_bound is None:
            return RegressionBound._loss_backward(ctx, g_loss)
        phi, mean, tril, proj, resid, sq, prec = ctx.saved_tensors
        _, num_data, wishart_a, wishart_psi, consts = ctx.consts
        lower, inv_var = consts[1], consts[5]
        b, o = sq.shape
        gn, h = _upstream(g_bound, g_loss, b, num_data)
        scale = torch.outer(gn, prec)  # g'_ni = -g_n / v_i, [B, O]
        g_resid = resid * scale  # [B, O]
        g_proj = proj * scale.mT.unsqueeze(-1)  # G_i, [O, B, D]
        decay = h * inv_var
        g_tril = torch.baddbmm(tril * decay, phi.mT.expand(o, -1, -1), g_proj)
        g_raw = g_tril.mul_(lower)  # dL/dR keeps the lower triangle; on the diagonal dL/dl = exp(l)
        g_raw.diagonal(dim1=-2, dim2=-1).mul_(tril.diagonal(dim1=-2, dim2=-1)).sub_(h)
        g_mean = torch.addmm(mean * decay, g_resid.mT, phi, alpha=-1.0)
        g_log_v = None
        if ctx.needs_input_grad[4]:
            # d/dlog v_i = 1/v_i (sum_n g_n sq_ni - psi h) / 2 + a h - sum_n g_n / 2, with g = -gn
            base = torch.add(h * wishart_a, gn.sum(), alpha=0.5)
            g_log_v = torch.addcmul(base, prec, torch.mv(sq.mT, gn).add_(h, alpha=wishart_psi), value=-0.5)
        g_phi = None
        if ctx.needs_input_grad[0]:
            g_phi = torch.addmm(_phi_grad(g_proj, tril), g_resid, mean, alpha=-1.0)
        g_y = g_resid if ctx.needs_input_grad[1] else None
        return g_phi, g_y, g_mean, g_raw, g_log_v, None, None, None, None

    @staticmethod
    def _loss_backward(ctx, g_loss):
        """The backward of ``loss`` alone: every datum weighs ``1 / B``.

        The gradients are formed for a unit upstream gradient, with ``1 / B`` and ``1 / (N s^2)``
        passed as the products' ``alpha`` and ``beta`` (numbers that need no tensor), then scaled
        by ``g_loss`` together.  With ``G_i = P_i / v_i`` and ``g_ni = r_ni / v_i``:
        ``d/dL_i = Phi^T G_i / B + L_i / (N s^2)``, ``d/dm_i = -Phi^T g_i / B + m_i / (N s^2)``,
        ``d/dlog v_i = 1/2 + a/N - (sum_n sq_ni / (2B) + psi / (2N)) / v_i``.
        """
        phi, mean, tril, proj, resid, sq, prec = ctx.saved_tensors
        prior_var, num_data, _, _, consts = ctx.consts
        lower, inv_n, g_log_v0, psi_half = consts[1], *consts[6:]
        b, o = sq.shape
        decay = 1.0 / (num_data * prior_var)
        g_proj = proj * prec.view(o, 1, 1)  # B G_i, [O, B, D]
        g_resid = resid * prec  # [B, O]
        g_raw = torch.baddbmm(tril, phi.mT.expand(o, -1, -1), g_proj, beta=decay, alpha=1.0 / b).mul_(lower)
        g_raw.diagonal(dim1=-2, dim2=-1).mul_(tril.diagonal(dim1=-2, dim2=-1)).sub_(inv_n)
        grads = [torch.addmm(mean, g_resid.mT, phi, beta=decay, alpha=-1.0 / b), g_raw]
        g_phi = g_y = g_log_v = None
        if ctx.needs_input_grad[4]:
            g_log_v = torch.addcmul(g_log_v0, prec, torch.add(psi_half, sq.sum(0), alpha=0.5 / b), value=-1.0)
            grads.append(g_log_v)
        if ctx.needs_input_grad[0]:
            g_phi = torch.addmm(_phi_grad(g_proj, tril), g_resid, mean, beta=1.0 / b, alpha=-1.0 / b)
            grads.append(g_phi)
        if ctx.needs_input_grad[1]:
            g_y = torch.div(g_resid, b)
            grads.append(g_y)
        torch._foreach_mul_(grads, g_loss)
        return g_phi, g_y, grads[0], g_raw, g_log_v, None, None, None, None


class HeteroscedasticBound(torch.autograd.Function):
    """Heteroscedastic bound, dense ``q(W)`` and diagonal ``q(U)``, as `.reference.heteroscedastic_bound`.

    Inputs: ``phi [B, D]``, ``y [B, O]``, ``mean [O, D]``, ``raw [O, D, D]``, ``u_mean [O, D]``,
    ``u_log_var [O, D]``, ``offset [O]``, and the numbers ``prior_var``, ``u_prior_var``, ``num_data``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024);
        Lázaro-Gredilla & Titsias (ICML 2011).
    """

    @staticmethod
    def forward(ctx, phi, y, mean, raw, u_mean, u_log_var, offset, prior_var, u_prior_var, num_data):
        b, o = y.shape
        d = phi.shape[-1]
        consts = _heteroscedastic_consts(o, d, prior_var, u_prior_var, num_data, phi.dtype, phi.device)
        keep, lower, coef, one, c0, inv_var, inv_u_var = consts
        work = _pack(raw, mean, keep)
        err = torch.bmm(phi.expand(o, b, d), work)
        err[..., d].sub_(y.mT)
        u_var = u_log_var.exp()  # [O, D]
        mu = torch.addmm(offset, phi, u_mean.mT)  # [B, O]
        phi_sq = phi * phi
        t = phi_sq @ u_var.mT  # [B, O]
        e = torch.exp(torch.add(t, mu, alpha=-2.0).mul_(0.5))  # exp(-mu + t/2)
        a = (err * err).sum(-1).mT.mul(e)  # A = e (r^2 + phi^T S phi), [B, O]
        expected = torch.add(c0, torch.add(mu, a).sum(-1), alpha=-0.5)
        flat, u_flat = work.view(-1), u_mean.reshape(-1)
        terms = [torch.dot(flat, flat), raw.diagonal(dim1=-2, dim2=-1).sum(), u_var.sum(), torch.dot(u_flat, u_flat)]
        terms = torch.stack([*terms, u_log_var.sum(), one])
        ctx.save_for_backward(phi, u_mean, work, err, u_var, phi_sq, e, a)
        ctx.consts = (num_data, inv_var, inv_u_var, lower)
        ctx.set_materialize_grads(False)
        return _outputs(expected, torch.dot(terms, coef))

    @staticmethod
    def backward(ctx, g_bound, g_loss):
        if g_bound is None and g_loss is None:
            return (None, None, None, None, None, None, None, None, None, None)
        phi, u_mean, work, err, u_var, phi_sq, e, a = ctx.saved_tensors
        num_data, inv_var, inv_u_var, lower = ctx.consts
        b, o = a.shape
        gn, h = _upstream(g_bound, g_loss, b, num_data)
        gc = gn if gn.dim() == 0 else gn.unsqueeze(-1)  # per datum: [B, 1]
        g_mu = torch.rsub(a, 1.0).mul_(gc).mul_(0.5)  # g (A - 1) / 2 with g = -gn, [B, O]
        g_t = torch.mul(a, gc).mul_(0.25)  # -g A / 4
        g_err = err * torch.mul(e, gc).mT.unsqueeze(-1)  # G = -g e E, [O, B, D+1]
        g_work = torch.baddbmm(work * (h * inv_var), phi.mT.expand(o, -1, -1), g_err)
        g_raw, g_mean = _unpack_grad(g_work, work, lower, h)
        h_u = h * inv_u_var
        g_u_mean = torch.addmm(u_mean * h_u, g_mu.mT, phi)
        g_offset = g_mu.sum(0)
        g_u_log_var = (g_t.mT @ phi_sq).add_(h_u, alpha=0.5).mul_(u_var).sub_(h, alpha=0.5)
        g_phi = g_y = None
        if ctx.needs_input_grad[0]:
            g_phi = torch.addmm(_phi_grad(g_err, work), g_mu, u_mean).addcmul_(phi, g_t @ u_var, value=2.0)
        if ctx.needs_input_grad[1]:
            g_y = g_err[..., -1].mT.neg()
        return g_phi, g_y, g_mean, g_raw, g_u_mean, g_u_log_var, g_offset, None, None, None


class HeteroscedasticDenseBound(torch.autograd.Function):
    """Heteroscedastic bound, dense ``q(W)`` and dense ``q(U)``, as `.reference.heteroscedastic_bound`.

    Inputs: ``phi [B, D]``, ``y [B, O]``, ``mean [O, D]``, ``raw [O, D, D]``, ``u_mean [O, D]``,
    ``u_raw [O, D, D]``, ``offset [O]``, and the numbers ``prior_var``, ``u_prior_var``,
    ``num_data``.  The blocks ``[L_i | m_i]`` (rows ``0..O-1``) and ``[L^u_i | u_i]`` (rows
    ``O..2O-1``) are stacked, so one product serves both posteriors.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024);
        Lázaro-Gredilla & Titsias (ICML 2011).
    """

    @staticmethod
    def forward(ctx, phi, y, mean, raw, u_mean, u_raw, offset, prior_var, u_prior_var, num_data):
        b, o = y.shape
        d = phi.shape[-1]
        consts = _heteroscedastic_dense_consts(o, d, prior_var, u_prior_var, num_data, phi.dtype, phi.device)
        keep, lower, coef, one, c0, decay = consts
        raws = torch.cat([raw, u_raw])
        work = _pack(raws, torch.cat([mean, u_mean]), keep)
        prod = torch.bmm(phi.expand(2 * o, b, d), work)  # [2O, B, D+1]
        err, pu = prod[:o], prod[o:]  # [P | Phi m] -> E = [P | -r];  [P^u | Phi u]
        err[..., d].sub_(y.mT)
        mu = pu[..., d] + offset.unsqueeze(-1)  # [O, B]
        p_u = pu[..., :d]
        t = (p_u * p_u).sum(-1)
        e = torch.exp(torch.add(t, mu, alpha=-2.0).mul_(0.5))  # exp(-mu + t/2), [O, B]
        a = (err * err).sum(-1).mul_(e)  # A, [O, B]
        expected = torch.add(c0, torch.add(mu, a).sum(0), alpha=-0.5)
        terms = torch.stack([(work * work).mul_(decay).sum(), raws.diagonal(dim1=-2, dim2=-1).sum(), one])
        ctx.save_for_backward(phi, work, prod, e, a, decay)
        ctx.consts = (num_data, lower)
        ctx.set_materialize_grads(False)
        return _outputs(expected, torch.dot(terms, coef))

    @staticmethod
    def backward(ctx, g_bound, g_loss):
        if g_bound is None and g_loss is None:
            return (None, None, None, None, None, None, None, None, None, None)
        phi, work, prod, e, a, decay = ctx.saved_tensors
        num_data, lower = ctx.consts
        o, b = e.shape
        d = phi.shape[-1]
        gn, h = _upstream(g_bound, g_loss, b, num_data)
        g_prod = torch.empty_like(prod)  # stacked [G; G^u], [2O, B, D+1]
        gna = a * gn  # -g A, [O, B]
        torch.mul(prod[:o], torch.mul(e, gn).unsqueeze(-1), out=g_prod[:o])  # -g e E
        torch.mul(prod[o:], gna.mul(0.5).unsqueeze(-1), out=g_prod[o:])  # 2 P^u d/dt, d/dt = -g A / 4
        torch.sub(gn, gna, out=g_prod[o:, :, d]).mul_(0.5)  # d/dmu = g (A - 1) / 2
        g_work = torch.baddbmm(work * (decay * h), phi.mT.expand(2 * o, -1, -1), g_prod)
        g_raw, g_mean = _unpack_grad(g_work, work, lower, h)
        g_offset = g_prod[o:, :, d].sum(-1)
        g_phi = _phi_grad(g_prod, work) if ctx.needs_input_grad[0] else None
        g_y = g_prod[:o, :, d].mT.neg() if ctx.needs_input_grad[1] else None
        return g_phi, g_y, g_mean[:o], g_raw[:o], g_mean[o:], g_raw[o:], g_offset, None, None, None
