"""The full-rank (Cholesky) and low-rank-plus-diagonal Gaussian families, and the checks that
every Gaussian family shares.

`vitorch.families.gaussian` re-exports both families and explains, in its module notes,
how all three read log q from the noise and when ``log_prob`` on a given ``z`` warns.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014).
    Rezende, Mohamed & Wierstra, Stochastic Backpropagation and Approximate
    Inference in Deep Generative Models (2014).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor
from torch.distributions.utils import lazy_property

from . import _linalg
from .base import LOW_PRECISION, Family, as_params, cast_value
from .constraints import (
    finite_real_matrix,
    finite_real_vector,
    lower_cholesky_finite,
    positive_finite_vector,
    real_vector_support,
)

__all__ = ["FullRankNormal", "LowRankNormal"]

_LOG_2PI = math.log(2 * math.pi)
# log_prob is flagged unreliable when rounding z moves it by more than this fraction of
# the smallest conditional standard deviation (see _warn_if_unreliable).
_RELIABLE = 1e-2


def _warn_if_unreliable(family: str, ratio: Tensor, what: str, stacklevel: int) -> None:
    """Warn (Python shows it once per place) when ``eps * ratio`` exceeds `_RELIABLE`.

    ``ratio`` is a cheap lower bound on how many smallest conditional standard
    deviations the working precision's unit holds; the check reads one value, so it
    is skipped inside a compiled graph (where a host read would break it).
    ``stacklevel`` counts the frames from the caller up to the user's call.
    """
    if torch.compiler.is_compiling() or ratio.numel() == 0:
        return
    eps = torch.finfo(ratio.dtype).eps
    if bool((ratio.max() * eps > _RELIABLE).item()):
        warnings.warn(
            f"{family}.log_prob is unreliable in {ratio.dtype}: {what}, so rounding z to the dtype moves it by "
            f"more than {_RELIABLE:.0%} of the smallest conditional standard deviation and log q(z) and its "
            "gradient lose their accuracy. rsample_and_log_prob and the stopped draws of STL and DReG read log q "
            "from the noise and are unaffected; otherwise use float64 or a better-conditioned parametrization",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )


def _keep_validation(old: Family, new: Family) -> Family:
    """Give ``new`` (built unchecked from ``old``'s valid parameters) ``old``'s ``log_prob`` checking."""
    new._validate_args = old._validate_args
    return new


def _event_check(name: str, t: Tensor, ndim: int, family: str) -> None:
    if t.dim() < ndim:
        raise ValueError(f"{family}: {name} must have at least {ndim} dimension(s); got shape {tuple(t.shape)}")


class FullRankNormal(Family):
    """Gaussian with dense covariance ``scale_tril @ scale_tril.T``.

    Args:
        loc: ``[*batch, D]`` mean.
        scale_tril: ``[*batch, D, D]`` lower-triangular Cholesky factor with a
            positive diagonal; its batch dimensions broadcast against ``loc``'s.
        validate_args: check parameters and ``log_prob`` inputs.

    ``log_prob`` costs one triangular solve, ``O(D^2)`` per sample;
    ``rsample_and_log_prob`` costs one triangular product, and
    ``rsample_and_stopped_log_prob`` one product and one solve (of zeros, whose
    derivative is the solve's), its value read from the noise.  ``log_prob`` on a
    given ``z`` warns once when the factor's conditioning makes it unreliable
    (see the module notes).  In half precision the solve runs in float32.

    References:
        Titsias & Lázaro-Gredilla, *Doubly Stochastic Variational Bayes for non-Conjugate Inference*
        (ICML 2014): the Cholesky-factor reparameterization ``z = loc + L eps``.
        Kucukelbir, Tran, Ranganath, Gelman & Blei, *Automatic Differentiation Variational Inference*
        (JMLR 2017): the full-rank Gaussian family.
    """

    arg_constraints = {"loc": finite_real_vector, "scale_tril": lower_cholesky_finite}
    support = real_vector_support
    has_rsample = True

    def __init__(self, loc: Tensor, scale_tril: Tensor, validate_args: bool | None = None):
        loc, scale_tril = as_params("FullRankNormal", loc=loc, scale_tril=scale_tril)
        _event_check("loc", loc, 1, "FullRankNormal")
        _event_check("scale_tril", scale_tril, 2, "FullRankNormal")
        d = loc.shape[-1]
        if scale_tril.shape[-2:] != (d, d):
            raise ValueError(
                f"FullRankNormal: scale_tril must end in [D, D] = [{d}, {d}] to match loc; "
                f"got loc {tuple(loc.shape)} and scale_tril {tuple(scale_tril.shape)}"
            )
        try:
            batch_shape = torch.broadcast_shapes(loc.shape[:-1], scale_tril.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"FullRankNormal: batch shapes do not broadcast: loc {tuple(loc.shape)}, "
                f"scale_tril {tuple(scale_tril.shape)}"
            ) from None
        # Only the lower triangle is the factor: log_prob's triangular solve reads no more, so the
        # draw must not either, or a factor trained as a leaf gets upper-triangle gradients from
        # rsample alone and drifts away from what log_prob evaluates.
        self._loc, self._scale_tril = loc, scale_tril.tril()  # unbroadcast, for cheap products
        self.loc = loc.expand(*batch_shape, d)
        self.scale_tril = self._scale_tril.expand(*batch_shape, d, d)
        self._init_checked(batch_shape, loc.shape[-1:], validate_args, loc=loc, scale_tril=scale_tril)

    def expand(self, batch_shape, _instance=None):
        # Only loc is expanded: the unbroadcast factor keeps products and solves copy-free.
        loc = self.loc.expand(*batch_shape, self.event_shape[0])
        return _keep_validation(self, FullRankNormal(loc, self._scale_tril, validate_args=False))

    def detach(self) -> FullRankNormal:
        return _keep_validation(
            self, FullRankNormal(self._loc.detach(), self._scale_tril.detach(), validate_args=False)
        )

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        # From the unbroadcast factor: one O(D^2) reduction per distinct factor, not per batch element.
        return self._scale_tril.pow(2).sum(-1).expand(*self.batch_shape, self.event_shape[0])

    @property
    def covariance_matrix(self) -> Tensor:
        d = self.event_shape[0]
        return (self._scale_tril @ self._scale_tril.mT).expand(*self.batch_shape, d, d)

    def _half_log_det(self, tril: Tensor | None = None) -> Tensor:
        tril = self._scale_tril if tril is None else tril
        return tril.diagonal(dim1=-2, dim2=-1).log().sum(-1).expand(self.batch_shape)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self._loc + _linalg.matvec(self._scale_tril, eps)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        z = self._loc + _linalg.matvec(self._scale_tril, eps)
        d = self.event_shape[0]
        log_q = -0.5 * eps.pow(2).sum(-1) - (self._half_log_det() + 0.5 * d * _LOG_2PI)
        return z, log_q

    def rsample_and_stopped_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """``(z, log q(z))`` with log q at stopped parameters, read from the noise.

        ``u = L^{-1} (z - loc)`` at stopped ``loc, L`` is written ``eps + L^{-1} (z - sg(z))``:
        its value is ``eps`` exactly and its derivative in ``z`` is ``L^{-1}``, as the
        solve's, to every order.  Solving on the rounded ``z`` instead amplifies the
        rounding by ``||L^{-1}||``, which for an ill-conditioned factor (as Adam's noisy
        updates can make one in high dimension) leaves no correct digit.

        Returns:
            ``z [*sample, *batch, D]`` and ``log_q [*sample, *batch]``.

        References:
            Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017).
        """
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        z = self._loc + _linalg.matvec(self._scale_tril, eps)
        tril = self._scale_tril.detach()
        u = eps + _linalg.tril_solve(tril, z - z.detach())
        d = self.event_shape[0]
        return z, -0.5 * u.pow(2).sum(-1) - (self._half_log_det(tril) + 0.5 * d * _LOG_2PI)

    def _check_conditioning(self) -> None:
        # max|loc| + max row norm of L is at most ||z|| to a factor; min diag L is at least the
        # smallest singular value; so the ratio underestimates the amplification of rounding.
        if getattr(self, "_conditioning_checked", False):
            return
        self._conditioning_checked = True
        tril = self._scale_tril.detach()
        scale = self._loc.detach().abs().amax(-1) + tril.pow(2).sum(-1).sqrt().amax(-1)
        smallest = tril.diagonal(dim1=-2, dim2=-1).amin(-1)
        what = "scale_tril is ill-conditioned (max|loc| + max row norm over min diagonal entry is too large)"
        _warn_if_unreliable("FullRankNormal", scale / smallest, what, stacklevel=3)  # log_prob's caller

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = cast_value(value, self.loc.dtype)
        self._check_conditioning()
        d = self.event_shape[0]
        u = _linalg.tril_solve(self._scale_tril, value - self.loc)
        return -0.5 * u.pow(2).sum(-1) - (self._half_log_det() + 0.5 * d * _LOG_2PI)

    def entropy(self) -> Tensor:
        d = self.event_shape[0]
        return self._half_log_det() + 0.5 * d * (1 + _LOG_2PI)


class LowRankNormal(Family):
    """Gaussian with covariance ``cov_factor @ cov_factor.T + diag(cov_diag)``.

    Args:
        loc: ``[*batch, D]`` mean.
        cov_factor: ``[*batch, D, R]`` low-rank factor ``W``.
        cov_diag: ``[*batch, D]`` positive diagonal ``d``.
        validate_args: check parameters and ``log_prob`` inputs.

    ``log_prob`` uses the Woodbury identity and the matrix determinant lemma
    through the ``R x R`` capacitance ``I + W^T diag(d)^{-1} W``, so it costs
    ``O(D R)`` per sample plus one ``O(R^3)`` factorization per distinct factor.
    The Woodbury Mahalanobis term is a difference of two quadratic forms, so it
    loses about ``log10(max(W W^T) / min(cov_diag))`` digits; when that ratio nears
    ``1 / eps`` of the dtype, use `FullRankNormal` (``log_prob`` warns once when
    it passes ``0.01 / eps``).  ``rsample_and_log_prob`` and
    ``rsample_and_stopped_log_prob`` evaluate it on the exact ``z - loc`` of the draw,
    so a large ``loc`` costs them no digits.  In half precision the capacitance and
    its solves run in float32.

    References:
        Rezende, Mohamed & Wierstra, *Stochastic Backpropagation and Approximate Inference in Deep
        Generative Models* (ICML 2014): diagonal-plus-low-rank Gaussian posteriors.
        Ong, Nott & Smith, *Gaussian Variational Approximation with a Factor Covariance Structure*
        (J. Comput. Graph. Stat. 2018).
    """

    arg_constraints = {
        "loc": finite_real_vector,
        "cov_factor": finite_real_matrix,
        "cov_diag": positive_finite_vector,
    }
    support = real_vector_support
    has_rsample = True

    def __init__(self, loc: Tensor, cov_factor: Tensor, cov_diag: Tensor, validate_args: bool | None = None):
        loc, cov_factor, cov_diag = as_params("LowRankNormal", loc=loc, cov_factor=cov_factor, cov_diag=cov_diag)
        _event_check("loc", loc, 1, "LowRankNormal")
        _event_check("cov_factor", cov_factor, 2, "LowRankNormal")
        _event_check("cov_diag", cov_diag, 1, "LowRankNormal")
        d = loc.shape[-1]
        if cov_factor.shape[-2] != d or cov_diag.shape[-1] != d:
            raise ValueError(
                f"LowRankNormal: event sizes differ: loc {tuple(loc.shape)}, cov_factor "
                f"{tuple(cov_factor.shape)} (expected [..., {d}, R]), cov_diag {tuple(cov_diag.shape)}"
            )
        try:
            batch_shape = torch.broadcast_shapes(loc.shape[:-1], cov_factor.shape[:-2], cov_diag.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"LowRankNormal: batch shapes do not broadcast: loc {tuple(loc.shape)}, "
                f"cov_factor {tuple(cov_factor.shape)}, cov_diag {tuple(cov_diag.shape)}"
            ) from None
        r = cov_factor.shape[-1]
        self._cov_factor, self._cov_diag = cov_factor, cov_diag  # unbroadcast, for the capacitance
        self.loc = loc.expand(*batch_shape, d)
        self.cov_factor = cov_factor.expand(*batch_shape, d, r)
        self.cov_diag = cov_diag.expand(*batch_shape, d)
        self._init_checked(
            batch_shape, loc.shape[-1:], validate_args, loc=loc, cov_factor=cov_factor, cov_diag=cov_diag
        )

    def expand(self, batch_shape, _instance=None):
        # Only loc is expanded, so the capacitance is factorized once per distinct factor.
        loc = self.loc.expand(*batch_shape, self.event_shape[0])
        return _keep_validation(self, LowRankNormal(loc, self._cov_factor, self._cov_diag, validate_args=False))

    def detach(self) -> LowRankNormal:
        return _keep_validation(
            self,
            LowRankNormal(self.loc.detach(), self._cov_factor.detach(), self._cov_diag.detach(), validate_args=False),
        )

    @property
    def rank(self) -> int:
        return self.cov_factor.shape[-1]

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return (self._cov_factor.pow(2).sum(-1) + self._cov_diag).expand(*self.batch_shape, self.event_shape[0])

    @property
    def covariance_matrix(self) -> Tensor:
        d = self.event_shape[0]
        cov = self._cov_factor @ self._cov_factor.mT + torch.diag_embed(self._cov_diag)
        return cov.expand(*self.batch_shape, d, d)

    @property
    def scale_tril(self) -> Tensor:
        # Factorize each distinct covariance once, then broadcast.
        d = self.event_shape[0]
        cov = self._cov_factor @ self._cov_factor.mT + torch.diag_embed(self._cov_diag)
        return _linalg.cholesky(cov).expand(*self.batch_shape, d, d)

    def _work(self) -> tuple[Tensor, Tensor]:
        """``(W, d)`` in the working precision: float32 for half-precision parameters."""
        w, cov_diag = self._cov_factor, self._cov_diag
        if w.dtype in LOW_PRECISION:
            return w.float(), cov_diag.float()
        return w, cov_diag

    @lazy_property
    def _capacitance_tril(self) -> Tensor:
        # C = I + W^T D^{-1} W; its Cholesky gives both the Woodbury solve and log|Sigma|.
        w, cov_diag = self._work()
        wt_dinv = w.mT / cov_diag.unsqueeze(-2)
        cap = wt_dinv @ w
        cap = cap + torch.eye(self.rank, dtype=cap.dtype, device=cap.device)
        return torch.linalg.cholesky(cap)

    def _log_det(self) -> Tensor:
        """``log|Sigma|`` ``[*batch]`` in the working precision."""
        half = self._capacitance_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (2 * half + self._work()[1].log().sum(-1)).expand(self.batch_shape)

    def _noise(self, sample_shape) -> Tensor:
        """``W eps_w + sqrt(d) eps_d`` ``[*sample, *batch, D]``: ``z - loc`` of a draw, without ``loc``'s rounding."""
        shape = self._extended_shape(sample_shape)
        eps_w = torch.randn(*shape[:-1], self.rank, dtype=self.loc.dtype, device=self.loc.device)
        eps_d = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return _linalg.matvec(self._cov_factor, eps_w) + self.cov_diag.sqrt() * eps_d

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.loc + self._noise(sample_shape)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        # log q(loc + x) depends on x = z - loc alone, so evaluate it on x (the total derivative
        # in loc is zero either way) and skip the support check a draw does not need.
        x = self._noise(sample_shape)
        return self.loc + x, self._centered_log_prob(x)

    def rsample_and_stopped_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """``(z, log q(z))`` at stopped parameters, on the exact ``x = z - loc`` (gradient only through ``z``)."""
        x = self._noise(sample_shape)
        z = self.loc + x
        s = self.detach()
        return z, s._centered_log_prob(x.detach() + (z - z.detach()))

    def _centered_log_prob(self, x: Tensor) -> Tensor:
        """``log q(loc + x)`` for ``x [*sample, *batch, D]``, by Woodbury and the determinant lemma."""
        dtype = x.dtype
        w, cov_diag = self._work()
        x = x.to(w.dtype)
        x_over_d = x / cov_diag
        wt_x = _linalg.matvec(w.mT, x_over_d)
        y = _linalg.tril_solve(self._capacitance_tril, wt_x)
        mahalanobis = (x * x_over_d).sum(-1) - y.pow(2).sum(-1)
        d = self.event_shape[0]
        return (-0.5 * (mahalanobis + self._log_det() + d * _LOG_2PI)).to(dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if not getattr(self, "_conditioning_checked", False):
            self._conditioning_checked = True
            w, cov_diag = self._cov_factor.detach(), self._cov_diag.detach()
            ratio = w.pow(2).sum(-1).amax(-1) / cov_diag.amin(-1)
            what = "cov_factor W dwarfs cov_diag d (max(W W^T) / min(d) is too large for the Woodbury identity)"
            _warn_if_unreliable("LowRankNormal", ratio, what, stacklevel=2)
        return self._centered_log_prob(cast_value(value, self.loc.dtype) - self.loc)

    def entropy(self) -> Tensor:
        d = self.event_shape[0]
        return (0.5 * (self._log_det() + d * (1 + _LOG_2PI))).to(self.loc.dtype)
