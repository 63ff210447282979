"""Closed-form KL divergences between Gaussian families, registered with torch.

``torch.distributions.kl_divergence(q, p)`` works for every pair drawn from
{DiagNormal, FullRankNormal, LowRankNormal} and torch's ``Independent(Normal, 1)``,
``MultivariateNormal`` and ``LowRankMultivariateNormal`` in which at least one
side is a vitorch family.  All use

    KL(q || p) = -H(q) - E_q[log p(z)],
    E_q[log p] = -D/2 log 2 pi - log|L_p| - 1/2 (||L_p^{-1} A_q||_F^2 + ||L_p^{-1}(mu_q - mu_p)||^2),

where ``A_q A_q^T = Sigma_q`` is any square root of q's covariance (``diag(scale)``,
``scale_tril`` or ``[W, diag(sqrt d)]``), so the low-rank q needs no Cholesky.
When p is diagonal the trace reduces to ``sum(var_q / var_p)``: ``O(D)`` for a
diagonal q and no solve at all.

References:
    Kullback & Leibler, On Information and Sufficiency (Ann. Math. Stat., 1951).
    Rasmussen & Williams, Gaussian Processes for Machine Learning (MIT Press, 2006), appendix A.5:
    the KL divergence between two Gaussians.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torch.distributions import Independent, LowRankMultivariateNormal, MultivariateNormal, Normal, register_kl

from .gaussian import DiagNormal, FullRankNormal, LowRankNormal

_LOG_2PI = math.log(2 * math.pi)
_VITORCH = (DiagNormal, FullRankNormal, LowRankNormal)
_TORCH = (Independent, MultivariateNormal, LowRankMultivariateNormal)


def _is_diag_normal(d) -> bool:
    return isinstance(d, DiagNormal) or (
        isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1
    )


def _check_gaussian(d) -> None:
    if isinstance(d, Independent) and not _is_diag_normal(d):
        raise NotImplementedError("KL is registered for Independent(Normal, 1) only")


def _diag_loc_scale(d) -> tuple[Tensor, Tensor]:
    if isinstance(d, DiagNormal):
        return d.loc, d.scale
    loc, scale = d.base_dist.loc, d.base_dist.scale
    return torch.broadcast_tensors(loc, scale)


def _entropy(d) -> Tensor:
    if isinstance(d, Independent):
        loc, scale = _diag_loc_scale(d)
        return scale.log().sum(-1) + 0.5 * loc.shape[-1] * (1 + _LOG_2PI)
    return d.entropy()


def _variance(d) -> Tensor:
    return _diag_loc_scale(d)[1].pow(2) if isinstance(d, Independent) else d.variance


def _cov_root(d) -> Tensor:
    """A matrix ``A`` with ``A A^T`` equal to the covariance, ``[*batch, D, E]``."""
    if _is_diag_normal(d):
        return torch.diag_embed(_diag_loc_scale(d)[1])
    if isinstance(d, (LowRankNormal, LowRankMultivariateNormal)):
        return torch.cat([d.cov_factor, torch.diag_embed(d.cov_diag.sqrt())], dim=-1)
    return d.scale_tril


def _unbroadcast_tril(d) -> Tensor:
    """p's Cholesky factor without its batch expansion: solves then run once per distinct factor."""
    if isinstance(d, FullRankNormal):
        return d._scale_tril
    if isinstance(d, MultivariateNormal):
        return d._unbroadcasted_scale_tril
    return d.scale_tril


def _gaussian_kl(q, p) -> Tensor:
    _check_gaussian(q)
    _check_gaussian(p)
    d = q.event_shape[-1]
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"KL between Gaussians of different event shapes: q {tuple(q.event_shape)}, p {tuple(p.event_shape)}"
        )
    if _is_diag_normal(p):
        loc_p, scale_p = _diag_loc_scale(p)
        mean_term = ((_variance(q) + (q.mean - loc_p).pow(2)) / scale_p.pow(2)).sum(-1)
        cross = scale_p.log().sum(-1) + 0.5 * d * _LOG_2PI + 0.5 * mean_term
        return cross - _entropy(q)
    tril_p = _unbroadcast_tril(p)
    m = torch.linalg.solve_triangular(tril_p, _cov_root(q), upper=False)
    diff = (q.mean - p.mean).unsqueeze(-1)
    u = torch.linalg.solve_triangular(tril_p, diff, upper=False).squeeze(-1)
    half_log_det_p = tril_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    cross = half_log_det_p + 0.5 * d * _LOG_2PI + 0.5 * (m.pow(2).sum((-2, -1)) + u.pow(2).sum(-1))
    return cross - _entropy(q)


for _q, _p in itertools.product(_VITORCH + _TORCH, repeat=2):
    if _q in _VITORCH or _p in _VITORCH:
        register_kl(_q, _p)(_gaussian_kl)
