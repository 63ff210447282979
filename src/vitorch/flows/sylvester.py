"""Sylvester flows (van den Berg et al., 2018): ``y = x + Q R tanh(R2 Q^T x + b)``.

``Q`` is ``D x M`` with orthonormal columns and ``R``, ``R2`` are ``M x M`` upper
triangular, so by Sylvester's determinant identity
``det(dy/dx) = prod_i (1 + tanh'(.)_i R_ii R2_ii)``: an ``M``-unit bottleneck with an
``O(M)`` log-determinant.  The diagonals are ``tanh`` of free parameters, so
``R_ii R2_ii in (-1, 1)`` keeps the map invertible.  Two parameterizations of ``Q``:

* `HouseholderSylvester`: ``Q = H_1 ... H_L``, a product of ``L`` Householder
  reflections (``M = D``, ``L D`` parameters);
* `OrthogonalSylvester`: ``Q`` from the QR factorization of a free ``D x M``
  matrix (``M <= D``).

Direction: sampling is one pass of ``O(D M + M^2)``.  The inverse has no closed form,
but ``v = Q^T x`` solves an upper-triangular system of monotone scalar equations,
one back-substitution of ``M`` Newton solves (`._solve`) followed by one
implicit-gradient step with a triangular solve.  So ``log_prob``, sticking-the-landing
and DReG work, with ``M`` sequential scalar solves per layer (each a single Newton
step on the flow's own samples, which `vitorch.Flow` solves from the
forward pass's input).

References:
    van den Berg, Hasenclever, Tomczak & Welling, Sylvester Normalizing Flows for
    Variational Inference (UAI 2018).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._solve import tanh_root
from .base import ParamNet, Transform, check_features

__all__ = ["HouseholderSylvester", "OrthogonalSylvester"]


def _matvec(m: Tensor, v: Tensor) -> Tensor:
    """``m @ v`` with ``m [*b, P, Q]`` and ``v [*s, *b, Q]`` broadcasting -> ``[*s, *b, P]``."""
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def _triangular(flat: Tensor, m: int) -> Tensor:
    """``[*b, M(M+1)/2]`` raw values -> ``[*b, M, M]`` upper triangular with ``tanh`` diagonal."""
    strict = flat[..., m:]
    rows, cols = torch.triu_indices(m, m, offset=1, device=flat.device)
    r = flat.new_zeros(*flat.shape[:-1], m, m)
    r[..., rows, cols] = strict  # in-place on a fresh tensor: autograd tracks it
    return r + torch.diag_embed(torch.tanh(flat[..., :m]))


class _Sylvester(Transform):
    """Shared maths; subclasses provide ``_q(raw) -> [*b, D, M]`` and ``_num_q`` raw values."""

    def __init__(self, dim: int, rank: int, num_q: int, context_features: int, hidden: Sequence[int]):
        super().__init__(dim)
        self.rank = check_features("rank", rank)
        if rank > dim:
            raise ValueError(f"rank must be <= dim; got rank={rank}, dim={dim}")
        self._num_q = num_q
        tri = rank * (rank + 1) // 2
        self.params = ParamNet(num_q + 2 * tri + rank, context_features, hidden, init_std=0.5)

    def _q(self, raw: Tensor) -> Tensor:
        raise NotImplementedError

    def _unpack(self, context):
        p = self.params(context)
        m, tri = self.rank, self.rank * (self.rank + 1) // 2
        q = self._q(p[..., : self._num_q])
        rest = p[..., self._num_q :]
        r1 = _triangular(rest[..., :tri], m)
        r2 = _triangular(rest[..., tri : 2 * tri], m)
        return q, r1, r2, rest[..., 2 * tri :]

    @staticmethod
    def _ladj(h: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
        diag = r1.diagonal(dim1=-2, dim2=-1) * r2.diagonal(dim1=-2, dim2=-1)
        return torch.log1p((1 - h * h) * diag).sum(-1)

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        q, r1, r2, b = self._unpack(context)
        h = torch.tanh(_matvec(r2, _matvec(q.mT, x)) + b)
        y = x + _matvec(q, _matvec(r1, h))
        return y, self._ladj(h, r1, r2)

    accepts_hint = True

    def inverse_and_ladj(self, y, context=None, hint=None):
        """The inverse by back-substitution of Newton solves; ``hint``, a guess of ``x``
        (such as the forward pass's input, which `vitorch.Flow` passes), only
        speeds it up."""
        self._check_input(y, "y")
        q, r1, r2, b = self._unpack(context)
        c = _matvec(q.mT, y)  # Q^T y = v + R1 tanh(R2 v + b), with v = Q^T x
        with torch.no_grad():
            guess = None if hint is None else _matvec(q.mT, hint).detach().expand_as(c)
            r1_, r2_, b_, c_ = (t.detach() for t in (r1, r2, b, c))
            m = self.rank
            v = torch.zeros_like(c_)
            h = torch.zeros_like(c_)
            # Back-substitution: row i involves v_i and the already solved v_{>i} only.
            for i in reversed(range(m)):
                t_i = (r2_[..., i, i + 1 :] * v[..., i + 1 :]).sum(-1) + b_[..., i]
                rhs = c_[..., i] - (r1_[..., i, i + 1 :] * h[..., i + 1 :]).sum(-1)
                g_i = None if guess is None else guess[..., i]
                v[..., i] = tanh_root(r1_[..., i, i], r2_[..., i, i], t_i, rhs, g_i)
                h[..., i] = torch.tanh(r2_[..., i, i] * v[..., i] + t_i)
            jac = torch.eye(m, dtype=v.dtype, device=v.device) + r1_ @ ((1 - h * h).unsqueeze(-1) * r2_)
        # One differentiable Newton step on F(v) = v + R1 tanh(R2 v + b) - Q^T y: exact value,
        # implicit-function gradient through the (stopped) upper-triangular Jacobian.
        residual = v + _matvec(r1, torch.tanh(_matvec(r2, v) + b)) - c
        v = v - torch.linalg.solve_triangular(jac, residual.unsqueeze(-1), upper=True).squeeze(-1)
        h = torch.tanh(_matvec(r2, v) + b)
        x = y - _matvec(q, _matvec(r1, h))
        return x, -self._ladj(h, r1, r2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}"


class HouseholderSylvester(_Sylvester):
    """Sylvester flow with ``Q`` a product of Householder reflections (``M = D``).

    Args:
        dim: event size ``D``.
        reflections: ``L``, the number of reflections (``L = D`` reaches every orthogonal matrix).
        context_features: ``C``; when positive, all parameters come from a hypernetwork.
        hidden: hidden widths of that hypernetwork.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        van den Berg, Hasenclever, Tomczak & Welling, Sylvester Normalizing Flows for
        Variational Inference (UAI 2018).
    """

    def __init__(self, dim: int, reflections: int = 2, context_features: int = 0, hidden: Sequence[int] = (64,)):
        self.reflections = check_features("reflections", reflections)
        super().__init__(dim, dim, reflections * dim, context_features, hidden)

    def _q(self, raw):
        vs = raw.unflatten(-1, (self.reflections, self.dim))
        q = torch.eye(self.dim, dtype=raw.dtype, device=raw.device).expand(*raw.shape[:-1], self.dim, self.dim)
        for k in range(self.reflections):
            vk = vs[..., k, :]
            # Q <- Q H_k with H_k = I - 2 v v^T / |v|^2.
            qv = _matvec(q, vk)
            q = q - 2 * qv.unsqueeze(-1) * vk.unsqueeze(-2) / (vk * vk).sum(-1)[..., None, None]
        return q


class OrthogonalSylvester(_Sylvester):
    """Sylvester flow with ``Q`` (``D x M``, orthonormal columns) from a QR factorization.

    Args:
        dim: event size ``D``.
        rank: ``M <= D``, the bottleneck width.
        context_features: ``C``; when positive, all parameters come from a hypernetwork.
        hidden: hidden widths of that hypernetwork.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        van den Berg, Hasenclever, Tomczak & Welling, Sylvester Normalizing Flows for
        Variational Inference (UAI 2018).
    """

    def __init__(self, dim: int, rank: int | None = None, context_features: int = 0, hidden: Sequence[int] = (64,)):
        rank = dim if rank is None else rank
        super().__init__(dim, rank, dim * check_features("rank", rank), context_features, hidden)

    def _q(self, raw):
        q, r = torch.linalg.qr(raw.unflatten(-1, (self.dim, self.rank)))
        # Fix the sign ambiguity of QR so Q is a smooth function of the raw matrix.
        return q * torch.sign(r.diagonal(dim1=-2, dim2=-1)).unsqueeze(-2)
