"""The linear-Gaussian state-space model with exact inference: the oracle for everything else.

Model, for ``t = 1..T``::

    x_1 ~ N(init_mean, init_cov)            (plus a flat prior on the diffuse directions)
    x_t = F x_{t-1} + w_t,  w_t ~ N(0, Q)    (F = transition_matrix, Q = transition_cov)
    y_t = H x_t + v_t,      v_t ~ N(0, R)    (H = emission_matrix, R = emission_cov)

**Diffuse initial states.**  ``diffuse=True`` (every state coordinate) or a boolean
mask ``[D]`` puts a flat prior on those coordinates of ``x_1``: ``x_1 = a + A delta
+ eta`` with ``eta ~ N(0, init_cov)`` and ``delta`` flat.  We integrate ``delta`` out
exactly with de Jong's (1991) augmented filter: the filter is linear in the data
and the initial mean, so one pass over ``1 + r`` mean columns (the data, then the
``r`` diffuse directions with zero data) gives innovations affine in ``delta``,
and the Gaussian integral over ``delta`` is closed form.  ``log_prob`` then equals
``lim_{kappa -> inf} [log p_kappa(y) + (r/2) log kappa]`` for the prior
``delta ~ N(0, kappa I)``, the exact diffuse log-likelihood of Durbin & Koopman
(2012, sec. 7.2) that statsmodels reports; the smoother and posterior sampler
account for the posterior uncertainty of ``delta``.

References:
    Durbin & Koopman, Time Series Analysis by State Space Methods (2012), ch. 4-7.
    de Jong, The Diffuse Kalman Filter, Annals of Statistics 19(2), 1991.
    Särkkä & García-Fernández, Temporal Parallelization of Bayesian Smoothers (2021).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .chain import GaussianMarkovChain
from .kalman import (
    FilterResult,
    _mv,
    backward_conditionals,
    backward_sample,
    kalman_filter,
    psd_sqrt,
    rts_smoother,
    symmetrize,
)
from .parallel import parallel_kalman_filter, parallel_rts_smoother

__all__ = ["LinearGaussianSSM"]

_LOG_2PI = math.log(2 * math.pi)


def _check_matrix(name: str, m: Tensor, rows: int, cols: int) -> None:
    if m.dim() < 2 or m.shape[-2:] != (rows, cols):
        raise ValueError(f"LinearGaussianSSM: {name} must end in [{rows}, {cols}]; got shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"LinearGaussianSSM: {name} must be finite (found NaN or inf)")


def _check_cov(name: str, m: Tensor, definite: bool) -> None:
    if not bool(torch.allclose(m, m.mT, rtol=1e-5, atol=1e-8)):
        raise ValueError(f"LinearGaussianSSM: {name} must be symmetric")
    evals = torch.linalg.eigvalsh(m.detach())
    floor = -1e-6 * evals.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    ok = (evals > 0) if definite else (evals >= floor)
    if not bool(ok.all()):
        kind = "positive definite" if definite else "positive semi-definite"
        raise ValueError(f"LinearGaussianSSM: {name} must be {kind}; smallest eigenvalue {evals.min().item():.3g}")


class LinearGaussianSSM:
    """Linear-Gaussian state-space model with Kalman filtering, RTS smoothing and FFBS.

    Parameters may carry batch dimensions ``[*b]`` that broadcast against the
    data's; they are used as given (no copies), so gradients flow to them (e.g.
    maximum-likelihood fitting through `log_prob`).  In ``y``, a row of NaNs
    marks a missing observation (no measurement update, no likelihood term).

    Args:
        transition_matrix: ``[*b, D, D]`` ``F``.
        transition_cov: ``[*b, D, D]`` ``Q``, positive semi-definite (definite for
            `smooth`, `log_joint` and `posterior`).
        emission_matrix: ``[*b, p, D]`` ``H``.
        emission_cov: ``[*b, p, p]`` ``R``, positive definite.
        init_mean: ``[*b, D]`` mean of ``x_1``.
        init_cov: ``[*b, D, D]`` covariance of ``x_1``, positive semi-definite.
        diffuse: ``None``, ``True`` (all of ``x_1`` diffuse) or a boolean mask ``[D]``.
        validate_args: check shapes, finiteness and definiteness (default ``True``).

    Example:
        >>> m = LinearGaussianSSM(F, Q, H, R, m1, P1)
        >>> m.log_prob(y)              # y [*B, T, p] -> [*B]
        >>> means, covs = m.smooth(y)  # [*B, T, D], [*B, T, D, D]

    References:
        Kalman, *A New Approach to Linear Filtering and Prediction Problems* (J. Basic Eng., 1960).
        Rauch, Tung & Striebel, *Maximum Likelihood Estimates of Linear Dynamic Systems*
        (AIAA J., 1965).
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012): diffuse
        initial states and missing observations.
        Carter & Kohn, *On Gibbs Sampling for State Space Models* (Biometrika, 1994); Frühwirth-Schnatter,
        *Data Augmentation and Dynamic Linear Models* (J. Time Ser. Anal., 1994): FFBS.
        Särkkä & García-Fernández, *Temporal Parallelization of Bayesian Smoothers*
        (IEEE Trans. Autom. Control, 2021).
    """

    def __init__(
        self,
        transition_matrix: Tensor,
        transition_cov: Tensor,
        emission_matrix: Tensor,
        emission_cov: Tensor,
        init_mean: Tensor,
        init_cov: Tensor | None = None,
        diffuse: bool | Tensor | None = None,
        validate_args: bool = True,
    ):
        F, Q, H, R, m1 = (
            torch.as_tensor(t) for t in (transition_matrix, transition_cov, emission_matrix, emission_cov, init_mean)
        )
        D = F.shape[-1] if F.dim() >= 2 else -1
        p = H.shape[-2] if H.dim() >= 2 else -1
        if init_cov is None:
            if diffuse is None or diffuse is False:
                raise ValueError("LinearGaussianSSM: init_cov is required unless the initial state is diffuse")
            init_cov = torch.zeros(D, D, dtype=F.dtype, device=F.device)
        P1 = torch.as_tensor(init_cov)
        if validate_args:
            _check_matrix("transition_matrix", F, D, D)
            _check_matrix("transition_cov", Q, D, D)
            _check_matrix("emission_matrix", H, p, D)
            _check_matrix("emission_cov", R, p, p)
            _check_matrix("init_cov", P1, D, D)
            if m1.dim() < 1 or m1.shape[-1] != D or not bool(torch.isfinite(m1).all()):
                raise ValueError(f"LinearGaussianSSM: init_mean must be finite and end in [{D}]; got {tuple(m1.shape)}")
            _check_cov("transition_cov", Q, definite=False)
            _check_cov("emission_cov", R, definite=True)
            _check_cov("init_cov", P1, definite=False)
        self.transition_matrix, self.transition_cov = F, Q
        self.emission_matrix, self.emission_cov = H, R
        self.init_mean, self.init_cov = m1, P1
        self.state_dim, self.obs_dim = D, p
        eye = torch.eye(D, dtype=F.dtype, device=F.device)
        if diffuse is None or diffuse is False:
            self.diffuse_basis = None
        elif diffuse is True:
            self.diffuse_basis = eye
        else:
            mask = torch.as_tensor(diffuse)
            if mask.dtype != torch.bool or mask.shape != (D,):
                raise ValueError(
                    f"LinearGaussianSSM: diffuse must be True or a boolean mask of shape [{D}]; got {mask}"
                )
            self.diffuse_basis = eye[:, mask] if bool(mask.any()) else None

    # ------------------------------------------------------------------ helpers
    @property
    def _params(self) -> tuple[Tensor, ...]:
        return self.transition_matrix, self.transition_cov, self.emission_matrix, self.emission_cov

    def _time_first(self, y: Tensor) -> Tensor:
        y = torch.as_tensor(y)
        if y.dim() < 2 or y.shape[-1] != self.obs_dim:
            raise ValueError(f"LinearGaussianSSM: y must be [*batch, T, {self.obs_dim}]; got shape {tuple(y.shape)}")
        if y.shape[-2] < 1:
            raise ValueError("LinearGaussianSSM: y must have at least one time step")
        nan = torch.isnan(y)
        if bool(torch.isinf(y).any()) or bool((nan.any(-1) & ~nan.all(-1)).any()):
            raise ValueError(
                "LinearGaussianSSM: y must be finite real obs_dim-vectors, or all-NaN rows for missing time steps"
            )
        if y.dtype != self.transition_matrix.dtype:
            raise ValueError(
                f"LinearGaussianSSM: y has dtype {y.dtype} but the parameters {self.transition_matrix.dtype}"
            )
        return y.movedim(-2, 0)

    def _run(self, y: Tensor, parallel: bool) -> tuple[FilterResult, int]:
        """Filter ``y [T, *B, p]``; with a diffuse state the data column comes first, then ``r`` columns."""
        F, Q, H, R = self._params
        missing = torch.isnan(y).any(-1)
        observed = None
        if bool(missing.any()):
            observed = ~missing
            y = torch.where(missing.unsqueeze(-1), 0.0, y)  # finite stand-ins, never read by the filter
        m1, P1 = self.init_mean, self.init_cov
        r = 0
        if self.diffuse_basis is not None:
            r = self.diffuse_basis.shape[-1]
            batch = torch.broadcast_shapes(m1.shape[:-1], y.shape[1:-1])
            cols = self.diffuse_basis.mT.reshape(r, *(1,) * len(batch), -1)
            m1 = torch.cat([m1.expand(1, *batch, self.state_dim), cols.expand(r, *batch, self.state_dim)])
            y = torch.cat(
                [y.unsqueeze(1).expand(-1, 1, *batch, -1), y.new_zeros(y.shape[0], r, *batch, y.shape[-1])], 1
            )
        run = parallel_kalman_filter if parallel else kalman_filter
        return run(F, Q, H, R, m1, P1, y, observed), r

    @staticmethod
    def _auto(y: Tensor) -> bool:
        """Default filter: the associative scan once the sequential loop's per-step overhead dominates."""
        return y.shape[0] >= 16

    @staticmethod
    def _diffuse_posterior(res: FilterResult) -> tuple[Tensor, Tensor, Tensor]:
        """Gram matrix ``S [*B, r, r]``, its Cholesky factor, and ``delta``'s posterior mean ``[*B, r]``."""
        w0, W = res.whitened[:, 0], res.whitened[:, 1:]  # [T, *B, p], [T, r, *B, p]
        W = W.movedim(1, -1)  # [T, *B, p, r]
        S = (W.mT @ W).sum(0)
        b = (W.mT @ w0.unsqueeze(-1)).sum(0).squeeze(-1)
        L, info = torch.linalg.cholesky_ex(S)
        # Rounding can leave a rank-deficient S with a tiny positive pivot instead of a failed
        # factorization: a squared pivot below r * eps * max(diag S) counts as zero.
        tiny = S.shape[-1] * torch.finfo(S.dtype).eps * S.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True)
        if not bool((info == 0).all()) or bool((L.diagonal(dim1=-2, dim2=-1).pow(2) <= tiny).any()):
            raise ValueError(
                "LinearGaussianSSM: the data do not identify the diffuse initial state (singular Gram matrix)"
            )
        delta = -torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)
        return S, L, delta

    # ------------------------------------------------------------------ inference
    def log_prob(self, y: Tensor, parallel: bool | None = None) -> Tensor:
        """Log marginal likelihood ``log p(y_{1:T})`` by Kalman filtering.

        Args:
            y: ``[*B, T, p]`` observations.
            parallel: ``True`` for the associative-scan filter (``O(log T)`` depth), ``False``
                for the sequential one; by default the scan for ``T >= 16``, where the
                sequential loop's per-step overhead starts to dominate.  Both agree to
                rounding (tested).  The smoother and sampler use the same default for
                their forward pass.

        Returns:
            ``[*B]`` log-likelihoods (the exact diffuse likelihood for a diffuse state).
        """
        y = self._time_first(y)
        res, r = self._run(y, self._auto(y) if parallel is None else parallel)
        ll = res.log_liks()
        if r == 0:
            return ll.sum(0)
        S, L, delta = self._diffuse_posterior(res)
        ll0 = ll[:, 0].sum(0)
        quad = _mv(S, delta).mul(delta).sum(-1)  # b^T S^{-1} b
        return ll0 + 0.5 * quad - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def filter(self, y: Tensor, parallel: bool | None = None) -> tuple[Tensor, Tensor]:
        """Filtered means ``[*B, T, D]`` and covariances ``[*B, T, D, D]`` (proper initial state only)."""
        if self.diffuse_basis is not None:
            raise ValueError(
                "LinearGaussianSSM.filter: filtered laws are improper until the diffuse state is identified"
            )
        y = self._time_first(y)
        res, _ = self._run(y, self._auto(y) if parallel is None else parallel)
        means, covs = res.filt_means, res.filt_covs
        covs = covs.expand(means.shape[0], *means.shape[1:], self.state_dim)
        return means.movedim(0, -2), covs.movedim(0, -3)

    def smooth(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """RTS smoother: posterior means ``[*B, T, D]`` and covariances ``[*B, T, D, D]`` of ``x_t | y_{1:T}``."""
        y = self._time_first(y)
        parallel = self._auto(y)
        res, r = self._run(y, parallel)
        means, covs = (parallel_rts_smoother if parallel else rts_smoother)(self.transition_matrix, res)
        if r:
            _, L, delta = self._diffuse_posterior(res)
            M = means[:, 1:].movedim(1, -1)  # [T, *B, D, r]: smoothed response to each diffuse direction
            means, covs = means[:, 0] + _mv(M, delta), covs[:, 0]
            ML = torch.linalg.solve_triangular(L, M.mT, upper=False)  # L^{-1} M^T
            covs = symmetrize(covs + ML.mT @ ML)
        covs = covs.expand(means.shape[0], *means.shape[1:], self.state_dim)
        return means.movedim(0, -2), covs.movedim(0, -3)

    def sample_posterior(self, y: Tensor, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """Exact posterior draws of ``x_{1:T} | y_{1:T}`` by forward filtering, backward sampling.

        Returns:
            ``[*sample_shape, *B, T, D]`` paths.
        """
        sample_shape = torch.Size(sample_shape)
        y = self._time_first(y)
        res, r = self._run(y, self._auto(y))
        if r == 0:
            x = backward_sample(self.transition_matrix, res, sample_shape)
            return x.movedim(len(sample_shape), -2)
        # Draws are affine in (data, initial mean): sample with the data column, then add the
        # smoothed response to a posterior draw of the diffuse coefficients delta.
        S, L, delta = self._diffuse_posterior(res)
        data = FilterResult(*(None if t is None else t[:, 0] for t in res))
        x = backward_sample(self.transition_matrix, data, sample_shape)  # [*S, T, *B, D]
        smoother = parallel_rts_smoother if self._auto(y) else rts_smoother
        M = smoother(self.transition_matrix, res)[0][:, 1:].movedim(1, -1)  # [T, *B, D, r]
        eps = torch.randn(*sample_shape, *delta.shape, dtype=delta.dtype, device=delta.device)
        d = delta + torch.linalg.solve_triangular(L.mT, eps.unsqueeze(-1), upper=True).squeeze(-1)  # ~ N(delta, S^{-1})
        x = x + _mv(M, d.unsqueeze(len(sample_shape)))
        return x.movedim(len(sample_shape), -2)

    def posterior(self, y: Tensor) -> GaussianMarkovChain:
        """The exact posterior ``p(x_{1:T} | y_{1:T})`` as a reverse-time Gaussian Markov chain family.

        Its ``rsample_and_log_prob`` gives ``log p(x, y) - log q(x) = log p(y)`` for every draw, so
        it is the zero-variance variational family of the ELBO.  Proper initial states only.

        Returns:
            A `GaussianMarkovChain` with batch ``[*B]`` and event ``[T, D]``.
        """
        if self.diffuse_basis is not None:
            raise ValueError("LinearGaussianSSM.posterior: not available for a diffuse initial state")
        y = self._time_first(y)
        res, _ = self._run(y, self._auto(y))
        T, D = res.filt_means.shape[0], self.state_dim
        last_loc, last_tril = res.filt_means[-1], torch.linalg.cholesky(res.filt_covs[-1])
        if T == 1:
            G = c = C = res.filt_means.new_zeros(0)
            return GaussianMarkovChain(
                last_loc, last_tril, G.reshape(0, D, D), c.reshape(0, D), C.reshape(0, D, D), reverse=True
            )
        G, c, C = backward_conditionals(self.transition_matrix, res)
        # Generation order runs x_T, x_{T-1}, ..., so the kernels are listed backwards in time.
        G, c, C = G.flip(0).movedim(0, -3), c.flip(0).movedim(0, -2), torch.linalg.cholesky(C).flip(0).movedim(0, -3)
        return GaussianMarkovChain(last_loc, last_tril, G, c, C, reverse=True)

    # ------------------------------------------------------------------ generative side
    def _check_proper(self, what: str) -> None:
        if self.diffuse_basis is not None:
            raise ValueError(f"LinearGaussianSSM.{what}: needs a proper (non-diffuse) initial state")

    def log_joint(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x_{1:T}, y_{1:T})`` for paths ``x [*S, *B, T, D]`` and data ``y [*B, T, p]`` -> ``[*S, *B]``."""
        self._check_proper("log_joint")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("LinearGaussianSSM.log_joint: y must be finite (missing rows: use log_prob/smooth)")
        F, Q, H, R = self._params
        if x.shape[-1] != self.state_dim or x.shape[-2] != y.shape[-2]:
            raise ValueError(f"LinearGaussianSSM.log_joint: x {tuple(x.shape)} does not match y {tuple(y.shape)}")

        def gauss(resid: Tensor, cov: Tensor) -> Tensor:
            L = torch.linalg.cholesky(cov)
            u = torch.linalg.solve_triangular(L, resid.unsqueeze(-1), upper=False).squeeze(-1)
            return (
                -0.5 * u.pow(2).sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * resid.shape[-1] * _LOG_2PI
            )

        out = gauss(x[..., 0, :] - self.init_mean, self.init_cov)
        if x.shape[-2] > 1:
            out = out + gauss(x[..., 1:, :] - _mv(F.unsqueeze(-3), x[..., :-1, :]), Q.unsqueeze(-3)).sum(-1)
        return out + gauss(y - _mv(H.unsqueeze(-3), x), R.unsqueeze(-3)).sum(-1)

    def sample(self, num_steps: int, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """Simulate ``(x [*S, *b, T, D], y [*S, *b, T, p])`` from the model."""
        self._check_proper("sample")
        F, Q, H, R = self._params
        shape = torch.Size(sample_shape) + torch.broadcast_shapes(self.init_mean.shape, F.shape[:-1])
        like = self.init_mean
        x = self.init_mean + _mv(psd_sqrt(self.init_cov), torch.randn(shape, dtype=like.dtype, device=like.device))
        xs = [x]
        rq = psd_sqrt(Q)
        for _ in range(num_steps - 1):
            x = _mv(F, x) + _mv(rq, torch.randn(shape, dtype=like.dtype, device=like.device))
            xs.append(x)
        x = torch.stack(xs, -2)
        noise = torch.randn(*x.shape[:-1], self.obs_dim, dtype=like.dtype, device=like.device)
        y = _mv(H.unsqueeze(-3), x) + _mv(torch.linalg.cholesky(R).unsqueeze(-3), noise)
        return x, y
