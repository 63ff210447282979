"""Weight posteriors for variational last layers: one Gaussian per output row.

A last layer ``W [O, D]`` gets ``q(W) = prod_i N(w_i | m_i, S_i)``: the rows are
independent, each with its own covariance ``S_i [D, D]``.  With a diagonal noise
covariance this family contains the exact Bayesian linear regression posterior, so
the deterministic VBLL objective can be made tight (Harrison et al., 2024, Sec. 3).

Four parameterizations of ``S_i`` share one interface, and the heads take any of
them as a factory ``covariance(out_features, in_features) -> module``:

* `Dense` — a Cholesky factor, ``S = L L^T``;
* `Diagonal` — ``S = diag(s)`` (mean field);
* `LowRank` — ``S = U U^T + diag(s)`` with ``U [D, R]``;
* `DensePrecision` — a Cholesky factor of the precision, ``S = (L L^T)^{-1}``,
  which is what recursive / closed-form updates produce.

Each module exposes what the objectives need: ``quad(phi) = phi^T S_i phi``, the KL
to an isotropic prior, the dense covariance (for tests and predictive checks), a
`vitorch.families` distribution for Monte Carlo objectives, and
``set_posterior(mean, precision)`` which moves to the member of the family closest
in ``KL(q || p)`` to a Gaussian target (exact for the dense forms; ``1 / diag(P)``,
the mean-field optimum, for the diagonal and low-rank forms).

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from ...families import DiagNormal, FullRankNormal, LowRankNormal
from ...kernels.vbll_regression import RowCovariance
from ...kernels.vbll_regression.reference import gaussian_rows_kl
from . import _legacy

__all__ = ["Dense", "Diagonal", "LowRank", "DensePrecision", "WeightPosterior"]


class WeightPosterior(nn.Module):
    """Base class: row-independent Gaussian ``q(W)`` with mean ``[O, D]``.

    ``is_diagonal`` tells heads that every ``S_i`` is diagonal, so that they may use
    `diagonal` instead of dense algebra.

    Args:
        out_features: O, the number of rows (outputs or classes).
        in_features: D, the feature dimension.
        init_variance: initial variance of every weight (the diagonal of ``S_i``).
        init_mean_scale: standard deviation of the random initial mean.

    Shapes: ``mean [O, D]``; ``quad(phi [N, D]) -> [N, O]``; ``trace()``, ``log_det()``
    ``-> [O]``; ``covariance() -> [O, D, D]``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the row-independent Gaussian weight posteriors of the last layer.
    """

    is_diagonal = False

    def __init__(self, out_features: int, in_features: int, init_variance: float = 1.0, init_mean_scale: float = 0.0):
        super().__init__()
        for name, v in (("out_features", out_features), ("in_features", in_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer; got {v!r}")
        if not (math.isfinite(init_variance) and init_variance > 0):
            raise ValueError(f"{type(self).__name__}: init_variance must be positive and finite; got {init_variance}")
        self.out_features, self.in_features = out_features, in_features
        self.mean = nn.Parameter(init_mean_scale * torch.randn(out_features, in_features))

    def quad(self, phi: Tensor) -> Tensor:
        """``phi_n^T S_i phi_n`` for ``phi [N, D]``, returned as ``[N, O]``."""
        raise NotImplementedError

    def trace(self) -> Tensor:
        """``tr(S_i)``, ``[O]``."""
        raise NotImplementedError

    def log_det(self) -> Tensor:
        """``log |S_i|``, ``[O]``."""
        raise NotImplementedError

    def covariance(self) -> Tensor:
        """Dense ``S_i``, ``[O, D, D]``."""
        raise NotImplementedError

    def diagonal(self) -> Tensor:
        """The diagonal of ``S_i``, ``[O, D]``."""
        return self.covariance().diagonal(dim1=-2, dim2=-1)

    def row_covariance(self) -> RowCovariance:
        """The covariances ``S_i [D, D]`` by structure and parameters, as the kernels in
        `vitorch.kernels.vbll_regression` take them."""
        raise NotImplementedError

    def distribution(self):
        """``q(W)`` as a vitorch family with batch shape ``[O]`` and event shape ``[D]``."""
        raise NotImplementedError

    def joint_distribution(self):
        """``q(vec W)`` as one vitorch family with event shape ``[O * D]`` (rows concatenated).

        For objectives whose likelihood couples the rows (a softmax over classes), where
        the rows cannot be the batch of the bound.  The covariance is block diagonal.
        """
        q = self.distribution()
        return FullRankNormal(self.mean.flatten(), torch.block_diag(*q.scale_tril.unbind(0)))

    def set_posterior(self, mean: Tensor, precision: Tensor) -> None:
        """Move to the member closest in ``KL(q || p)`` to ``p = N(mean [O, D], precision^{-1} [O, D, D])``."""
        raise NotImplementedError

    def quad_and_trace(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """``(quad(phi) [N, O], trace() [O])`` together; dense forms share one factor."""
        return self.quad(phi), self.trace()

    def kl_to_isotropic(self, prior_variance: float | Tensor, trace: Tensor | None = None) -> Tensor:
        """``KL(q(w_i) || N(0, v I))`` for every row, ``[O]``.

        ``KL = 1/2 [tr(S)/v + m^T m / v - D + D log v - log|S|]``; pass ``trace`` if
        it is already at hand (from `quad_and_trace`).  ``v`` is a float or a 0-d tensor.
        """
        trace = self.trace() if trace is None else trace
        return gaussian_rows_kl(self.mean, trace, self.log_det(), prior_variance)

    def _set_mean(self, mean: Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)


def _eye_like(x: Tensor, d: int) -> Tensor:
    return torch.eye(d, dtype=x.dtype, device=x.device)


class Diagonal(WeightPosterior):
    """Mean-field rows, ``S_i = diag(exp(log_var_i))``.

    Parameters: ``mean [O, D]`` and ``log_var [O, D]``.  Args as `WeightPosterior`.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the row-independent Gaussian weight posteriors of the last layer.
    """

    is_diagonal = True

    def __init__(self, out_features: int, in_features: int, init_variance: float = 1.0, init_mean_scale: float = 0.0):
        super().__init__(out_features, in_features, init_variance, init_mean_scale)
        self.log_var = nn.Parameter(torch.full((out_features, in_features), math.log(init_variance)))

    def variance(self) -> Tensor:
        return self.log_var.exp()

    def row_covariance(self) -> RowCovariance:
        return RowCovariance("diagonal", (self.log_var,))

    def quad(self, phi: Tensor) -> Tensor:
        return phi.pow(2) @ self.variance().mT

    def trace(self) -> Tensor:
        return self.variance().sum(-1)

    def log_det(self) -> Tensor:
        return self.log_var.sum(-1)

    def covariance(self) -> Tensor:
        return torch.diag_embed(self.variance())

    def diagonal(self) -> Tensor:
        return self.variance()

    def distribution(self) -> DiagNormal:
        return DiagNormal(self.mean, self.variance().sqrt())

    def joint_distribution(self) -> DiagNormal:
        return DiagNormal(self.mean.flatten(), self.variance().sqrt().flatten())

    def set_posterior(self, mean: Tensor, precision: Tensor) -> None:
        # argmin_q KL(q || N(m, P^{-1})) over diagonal q: mean m, variances 1 / diag(P).
        self._set_mean(mean)
        with torch.no_grad():
            self.log_var.copy_(-precision.diagonal(dim1=-2, dim2=-1).log())


class LowRank(WeightPosterior):
    """``S_i = U_i U_i^T + diag(exp(log_diag_i))`` with ``U_i [D, rank]``.

    Args:
        rank: R, the number of columns of ``U``.  Use ``functools.partial(LowRank,
            rank=R)`` (or `with_rank`) as the heads' ``covariance`` factory.

    Parameters: ``mean [O, D]``, ``factor [O, D, R]`` and ``log_diag [O, D]``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the row-independent Gaussian weight posteriors of the last layer.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        init_variance: float = 1.0,
        init_mean_scale: float = 0.0,
        *,
        rank: int = 2,
    ):
        super().__init__(out_features, in_features, init_variance, init_mean_scale)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LowRank: rank must be a positive integer; got {rank!r}")
        self.rank = rank
        self.log_diag = nn.Parameter(torch.full((out_features, in_features), math.log(init_variance)))
        # Small random factor so that its gradient is not identically zero at the start.
        self.factor = nn.Parameter(1e-3 * math.sqrt(init_variance) * torch.randn(out_features, in_features, rank))

    @classmethod
    def with_rank(cls, rank: int):
        """A ``covariance`` factory for the heads: ``VBLLRegression(D, covariance=LowRank.with_rank(4))``."""
        return functools.partial(cls, rank=rank)

    def row_covariance(self) -> RowCovariance:
        return RowCovariance("low_rank", (self.factor, self.log_diag))

    def quad(self, phi: Tensor) -> Tensor:
        proj = torch.einsum("nd,odr->nor", phi, self.factor)
        return proj.pow(2).sum(-1) + phi.pow(2) @ self.log_diag.exp().mT

    def trace(self) -> Tensor:
        return self.factor.pow(2).sum((-2, -1)) + self.log_diag.exp().sum(-1)

    def log_det(self) -> Tensor:
        # Matrix determinant lemma: |U U^T + D| = |D| |I + U^T D^{-1} U|.
        d = self.log_diag.exp()
        cap = self.factor.mT @ (self.factor / d.unsqueeze(-1)) + _eye_like(d, self.rank)
        return self.log_diag.sum(-1) + 2 * torch.linalg.cholesky(cap).diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def covariance(self) -> Tensor:
        return self.factor @ self.factor.mT + torch.diag_embed(self.log_diag.exp())

    def distribution(self) -> LowRankNormal:
        return LowRankNormal(self.mean, self.factor, self.log_diag.exp())

    def joint_distribution(self) -> LowRankNormal:
        return LowRankNormal(
            self.mean.flatten(), torch.block_diag(*self.factor.unbind(0)), self.log_diag.exp().flatten()
        )

    def set_posterior(self, mean: Tensor, precision: Tensor) -> None:
        # No closed form for the low-rank KL optimum; start next to the mean-field optimum,
        # which the heads' solve_posterior() then improves by optimization.  The factor is small but
        # not zero: U = 0 is a stationary point of every objective in U.
        self._set_mean(mean)
        with torch.no_grad():
            var = precision.diagonal(dim1=-2, dim2=-1).reciprocal()
            self.log_diag.copy_(var.log())
            self.factor.copy_(1e-3 * var.sqrt().unsqueeze(-1) * torch.randn_like(self.factor))


class _Cholesky(WeightPosterior):
    """A lower-triangular factor ``L_i`` per row, from one unconstrained matrix ``raw_tril``.

    ``L = tril(raw_tril, -1) + diag(exp(diag(raw_tril)))``: the strict lower triangle of
    ``raw_tril [O, D, D]`` is the factor's, its diagonal is the log of the factor's diagonal
    (kept positive by ``exp``), and its strict upper triangle is not read (a zero gradient).
    Parameters: ``mean [O, D]`` and ``raw_tril [O, D, D]``.
    """

    # log L_jj = _LOG_DIAG_PER_LOG_VARIANCE * log(init_variance): +1/2 for a factor of the
    # covariance, -1/2 for a factor of the precision.
    _LOG_DIAG_PER_LOG_VARIANCE: float
    _KIND: str

    def __init__(self, out_features: int, in_features: int, init_variance: float = 1.0, init_mean_scale: float = 0.0):
        super().__init__(out_features, in_features, init_variance, init_mean_scale)  # validates init_variance
        raw = torch.zeros(out_features, in_features, in_features)
        raw.diagonal(dim1=-2, dim2=-1).fill_(self._LOG_DIAG_PER_LOG_VARIANCE * math.log(init_variance))
        self.raw_tril = nn.Parameter(raw)

    @property
    def log_diag(self) -> Tensor:
        """``[O, D]`` log of the factor's diagonal: a view of ``raw_tril`` (in-place edits write through)."""
        return self.raw_tril.diagonal(dim1=-2, dim2=-1)

    def tril(self) -> Tensor:
        """The lower-triangular factor with positive diagonal, ``[O, D, D]``."""
        return self.raw_tril.tril(-1) + torch.diag_embed(self.log_diag.exp())

    def row_covariance(self) -> RowCovariance:
        return RowCovariance(self._KIND, (self.raw_tril,))

    def _set_tril(self, tril: Tensor) -> None:
        with torch.no_grad():
            self.raw_tril.copy_(tril.tril(-1))
            self.log_diag.copy_(tril.diagonal(dim1=-2, dim2=-1).log())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if _legacy.unpack_posterior(state_dict, prefix, self.in_features) is not None:
            _legacy.warn([prefix + "packed"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Dense(_Cholesky):
    """Dense rows through a Cholesky factor of the covariance, ``S_i = L_i L_i^T``.

    Parameters: ``mean [O, D]`` and ``raw_tril [O, D, D]``, the factor's strict lower triangle
    with the log of its diagonal on the diagonal: ``L = tril(raw_tril, -1) +
    diag(exp(diag(raw_tril)))`` (``log_diag`` is a view of that diagonal).  ``log |S_i| = 2
    sum_j log L_jj`` and ``tr S_i = ||L_i||_F^2`` need no factorization.  Args as
    `WeightPosterior`.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the row-independent Gaussian weight posteriors of the last layer.
    """

    _LOG_DIAG_PER_LOG_VARIANCE = 0.5
    _KIND = "scale_tril"

    def quad(self, phi: Tensor) -> Tensor:
        # phi^T L L^T phi = ||L^T phi||^2
        return torch.matmul(phi, self.tril()).pow(2).sum(-1).mT

    def quad_and_trace(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        tril = self.tril()
        return torch.matmul(phi, tril).pow(2).sum(-1).mT, tril.pow(2).sum((-2, -1))

    def trace(self) -> Tensor:
        return self.tril().pow(2).sum((-2, -1))

    def log_det(self) -> Tensor:
        return 2 * self.log_diag.sum(-1)

    def covariance(self) -> Tensor:
        tril = self.tril()
        return tril @ tril.mT

    def distribution(self) -> FullRankNormal:
        return FullRankNormal(self.mean, self.tril())

    def set_posterior(self, mean: Tensor, precision: Tensor) -> None:
        self._set_mean(mean)
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        self._set_tril(torch.linalg.cholesky(cov))


class DensePrecision(_Cholesky):
    """Dense rows through a Cholesky factor of the precision, ``S_i = (L_i L_i^T)^{-1}``.

    Closed-form (batch or recursive) Bayesian updates act on the precision, so this
    form is exact and cheap to set from them; ``quad`` costs a triangular solve.
    Parameters as `Dense` (``mean [O, D]``, ``raw_tril [O, D, D]``), here for the
    precision's factor.
    Args as `WeightPosterior`.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the row-independent Gaussian weight posteriors of the last layer.
    """

    _LOG_DIAG_PER_LOG_VARIANCE = -0.5
    _KIND = "precision_tril"

    def _solve(self, rhs: Tensor) -> Tensor:
        return torch.linalg.solve_triangular(self.tril(), rhs, upper=False)

    def quad(self, phi: Tensor) -> Tensor:
        # phi^T (L L^T)^{-1} phi = ||L^{-1} phi||^2, one solve per row with all N columns
        cols = phi.mT.expand(self.out_features, *phi.mT.shape)
        return self._solve(cols).pow(2).sum(-2).mT

    def trace(self) -> Tensor:
        eye = _eye_like(self.mean, self.in_features).expand(self.out_features, -1, -1)
        return self._solve(eye).pow(2).sum((-2, -1))

    def log_det(self) -> Tensor:
        return -2 * self.log_diag.sum(-1)

    def covariance(self) -> Tensor:
        return torch.cholesky_inverse(self.tril())

    def distribution(self) -> FullRankNormal:
        return FullRankNormal(self.mean, torch.linalg.cholesky(self.covariance()))

    def set_posterior(self, mean: Tensor, precision: Tensor) -> None:
        self._set_mean(mean)
        self._set_tril(torch.linalg.cholesky(precision))
