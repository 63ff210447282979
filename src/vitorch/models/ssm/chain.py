"""Gaussian Markov chains over whole latent paths: a structured variational family.

``x_1 = a + L_1 eps_1`` and ``x_t = A_t x_{t-1} + c_t + L_t eps_t`` with
``eps_t ~ N(0, I)``: a Gaussian whose precision is block-tridiagonal, the exact
form of a linear-Gaussian posterior (read backwards in time it is the FFBS
kernel of the RTS smoother).  Drawing is an affine recurrence, which we run as an
associative scan over affine maps (``O(log T)`` depth); the density of a given
path needs only the residuals of every step at once, so both directions cost
``O(T D^3)`` work and no step waits on the previous one.

References:
    Frühwirth-Schnatter, Data Augmentation and Dynamic Linear Models (1994).
    Archer, Park, Buesing, Cunningham & Paninski, Black Box Variational Inference
    for State Space Models (2015) (block-tridiagonal Gaussian posteriors).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from ...families.base import Family
from ._scan import associative_scan

__all__ = ["GaussianMarkovChain", "affine_recurrence"]

_LOG_2PI = math.log(2 * math.pi)


def _mv(m: Tensor, v: Tensor) -> Tensor:
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def affine_recurrence(x1: Tensor, A: Tensor, u: Tensor) -> Tensor:
    """Solve ``x_t = A_t x_{t-1} + u_t`` for ``t = 2..T`` by associative scan.

    Args:
        x1: ``[*B, D]`` first state.
        A: ``[T-1, *B', D, D]`` transition matrices, time first (``B'`` broadcasts to ``B``).
        u: ``[T-1, *B, D]`` offsets, time first.

    Returns:
        ``[T, *B, D]`` states, time first.

    References:
        Blelloch, *Prefix Sums and Their Applications* (CMU-CS-90-190, 1990).
        Särkkä & García-Fernández, *Temporal Parallelization of Bayesian Smoothers*
        (IEEE Trans. Autom. Control, 2021).
    """
    if A.shape[0] == 0:
        return x1.unsqueeze(0)

    def combine(earlier, later):
        (A_i, u_i), (A_j, u_j) = earlier, later
        return A_j @ A_i, _mv(A_j, u_i) + u_j

    # Fold x_1 into the first offset: the composed maps applied to 0 then give x_2..x_T.
    u = torch.cat([(u[0] + _mv(A[0], x1)).unsqueeze(0), u[1:]])
    _, prefix_u = associative_scan(combine, (A, u))
    return torch.cat([x1.unsqueeze(0).expand(1, *prefix_u.shape[1:]), prefix_u])


class GaussianMarkovChain(Family):
    """Gaussian Markov chain over paths ``x_{1:T}``, event shape ``[T, D]``.

    Args:
        init_loc: ``[*b, D]`` mean of the first state generated.
        init_scale_tril: ``[*b, D, D]`` its Cholesky factor.
        trans_matrix: ``[*b, T-1, D, D]`` ``A_t``.
        trans_offset: ``[*b, T-1, D]`` ``c_t``.
        trans_scale_tril: ``[*b, T-1, D, D]`` Cholesky factors ``L_t`` (positive diagonals).
        reverse: generate ``x_T`` first and run backwards in time (the FFBS form).
        validate_args: check the Cholesky factors.

    References:
        Archer, Park, Buesing, Cunningham & Paninski, *Black Box Variational Inference for State
        Space Models* (arXiv:1511.07367, 2015): Gaussian Markov posteriors over paths.
        Särkkä & García-Fernández, *Temporal Parallelization of Bayesian Smoothers*
        (IEEE Trans. Autom. Control, 2021).
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(
        self,
        init_loc: Tensor,
        init_scale_tril: Tensor,
        trans_matrix: Tensor,
        trans_offset: Tensor,
        trans_scale_tril: Tensor,
        reverse: bool = False,
        validate_args: bool | None = None,
    ):
        D = init_loc.shape[-1]
        for name, t, tail in (
            ("init_scale_tril", init_scale_tril, (D, D)),
            ("trans_matrix", trans_matrix, (D, D)),
            ("trans_scale_tril", trans_scale_tril, (D, D)),
            ("trans_offset", trans_offset, (D,)),
        ):
            if tuple(t.shape[-len(tail) :]) != tail:
                raise ValueError(f"GaussianMarkovChain: {name} must end in {list(tail)}; got {tuple(t.shape)}")
        steps = {trans_matrix.shape[-3], trans_offset.shape[-2], trans_scale_tril.shape[-3]}
        if len(steps) != 1:
            raise ValueError(
                "GaussianMarkovChain: trans_matrix, trans_offset and trans_scale_tril disagree on T-1: "
                f"{tuple(trans_matrix.shape)}, {tuple(trans_offset.shape)}, {tuple(trans_scale_tril.shape)}"
            )
        try:
            batch = torch.broadcast_shapes(
                init_loc.shape[:-1], init_scale_tril.shape[:-2], trans_matrix.shape[:-3],
                trans_offset.shape[:-2], trans_scale_tril.shape[:-3],
            )  # fmt: skip
        except RuntimeError:
            raise ValueError("GaussianMarkovChain: parameter batch shapes do not broadcast") from None
        if validate_args is not False:
            for name, L in (("init_scale_tril", init_scale_tril), ("trans_scale_tril", trans_scale_tril)):
                diag = L.diagonal(dim1=-2, dim2=-1)
                if not bool(((diag > 0) & torch.isfinite(diag)).all() and (L.triu(1) == 0).all()):
                    raise ValueError(
                        f"GaussianMarkovChain: {name} must be lower triangular with a positive finite diagonal"
                    )
        self.init_loc, self.init_scale_tril = init_loc, init_scale_tril
        self.trans_matrix, self.trans_offset, self.trans_scale_tril = trans_matrix, trans_offset, trans_scale_tril
        self.reverse = reverse
        T = trans_offset.shape[-2] + 1
        super().__init__(batch, torch.Size((T, D)), validate_args=False)

    def detach(self) -> GaussianMarkovChain:
        ps = (self.init_loc, self.init_scale_tril, self.trans_matrix, self.trans_offset, self.trans_scale_tril)
        return GaussianMarkovChain(*(p.detach() for p in ps), reverse=self.reverse, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        raise NotImplementedError("GaussianMarkovChain.expand: broadcast the parameters instead")

    def _time_first(self, t: Tensor, event_dims: int, n_sample: int) -> Tensor:
        """``[*b', T-1, *event] -> [T-1, 1 x n_sample, *b, *event]`` so it broadcasts against draws."""
        t = t.expand(*self.batch_shape, *t.shape[-1 - event_dims :]).movedim(-1 - event_dims, 0)
        return t.reshape(t.shape[0], *(1,) * n_sample, *t.shape[1:])

    def _path(self, x1: Tensor, u: Tensor, n_sample: int) -> Tensor:
        """Path in time order, time first, from the first generated state and the offsets ``u [T-1, ...]``."""
        x = affine_recurrence(x1, self._time_first(self.trans_matrix, 2, n_sample), u)
        return x.flip(0) if self.reverse else x

    def _noise(self, sample_shape: torch.Size) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        return torch.randn(shape, dtype=self.init_loc.dtype, device=self.init_loc.device)

    def _draw(self, eps: Tensor) -> Tensor:
        """``eps [*S, *b, T, D]`` in generation order -> path ``[*S, *b, T, D]`` in time order."""
        n = eps.dim() - 2 - len(self.batch_shape)
        eps_t = eps.movedim(-2, 0)  # [T, *S, *b, D]
        x1 = self.init_loc + _mv(self.init_scale_tril, eps_t[0])
        L = self._time_first(self.trans_scale_tril, 2, n)
        u = self._time_first(self.trans_offset, 1, n) + _mv(L, eps_t[1:])
        return self._path(x1, u, n).movedim(0, -2)

    def _half_log_det(self) -> Tensor:
        d0 = self.init_scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        dt = self.trans_scale_tril.diagonal(dim1=-2, dim2=-1).log().sum((-1, -2))
        return (d0 + dt).expand(self.batch_shape)

    def rsample(self, sample_shape=()) -> Tensor:
        return self._draw(self._noise(sample_shape))

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        eps = self._noise(sample_shape)
        T, D = self.event_shape
        log_q = -0.5 * eps.pow(2).sum((-1, -2)) - self._half_log_det() - 0.5 * T * D * _LOG_2PI
        return self._draw(eps), log_q

    def log_prob(self, value: Tensor) -> Tensor:
        x = value.flip(-2) if self.reverse else value  # generation order
        T, D = self.event_shape
        r1 = x[..., 0, :] - self.init_loc
        e1 = torch.linalg.solve_triangular(self.init_scale_tril, r1.unsqueeze(-1), upper=False).squeeze(-1)
        quad = e1.pow(2).sum(-1)
        if T > 1:
            rt = x[..., 1:, :] - _mv(self.trans_matrix, x[..., :-1, :]) - self.trans_offset
            et = torch.linalg.solve_triangular(self.trans_scale_tril, rt.unsqueeze(-1), upper=False).squeeze(-1)
            quad = quad + et.pow(2).sum((-1, -2))
        return -0.5 * quad - self._half_log_det() - 0.5 * T * D * _LOG_2PI

    @property
    def mean(self) -> Tensor:
        """``[*b, T, D]`` means (the noise-free recurrence)."""
        x1 = self.init_loc.expand(*self.batch_shape, self.event_shape[1])
        return self._path(x1, self._time_first(self.trans_offset, 1, 0), 0).movedim(0, -2)

    @property
    def marginal_covariances(self) -> Tensor:
        """``[*b, T, D, D]`` covariances of each ``x_t`` (``P_t = A_t P_{t-1} A_t^T + L_t L_t^T``; ``O(T)`` steps)."""
        L0 = self.init_scale_tril.expand(*self.batch_shape, *self.init_scale_tril.shape[-2:])
        A = self._time_first(self.trans_matrix, 2, 0)
        L = self._time_first(self.trans_scale_tril, 2, 0)
        P = L0 @ L0.mT
        covs = [P]
        for t in range(A.shape[0]):
            P = A[t] @ P @ A[t].mT + L[t] @ L[t].mT
            covs.append(P)
        covs = torch.stack(covs)
        return (covs.flip(0) if self.reverse else covs).movedim(0, -3)
