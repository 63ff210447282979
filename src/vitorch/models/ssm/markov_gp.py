"""Gaussian-process regression on time in ``O(T)``: the kernel as a linear SDE, inference by Kalman smoothing.

`MarkovGP` takes the same kernel objects as `vitorch.models.gp.ExactGP`
(Matérn 1/2, 3/2, 5/2, their sums, scalings, and products such as the quasi-periodic
``Periodic * Matern32``), converts them with `vitorch.models.ssm.sde_kernels.state_space`
and runs the per-step Kalman filter of `vitorch.models.ssm.timevarying` over the sorted
times.  The log marginal likelihood and the posterior of ``f`` are those of
``ExactGP`` up to rounding (for a `Periodic` factor, up to its series truncation), at
``O(T D^3)`` cost instead of ``O(T^3)``; with ``parallel=True`` (default for ``T >= 16``)
the filter and smoother are associative scans of depth ``O(log T)``.

Predictions at new times are the smoother's marginals with those times inserted as
missing observations.

References:
    Hartikainen & Särkkä, Kalman Filtering and Smoothing Solutions to Temporal Gaussian
    Process Regression Models (MLSP 2010).
    Särkkä & Solin, Applied Stochastic Differential Equations (CUP 2019), ch. 12.
    Särkkä & García-Fernández, Temporal Parallelization of Bayesian Smoothers (IEEE TAC 2021).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...loss import LossOutput
from ..gp.kernels import Kernel
from ..gp.likelihoods import GaussianLikelihood
from ..gp.linalg import check_data, module_dtype, unpack_batch
from ..gp.means import ZeroMean
from .kalman import FilterResult
from .sde_kernels import StateSpaceForm, discretize, state_space
from .timevarying import tv_kalman_filter, tv_smoother

__all__ = ["MarkovGP", "markov_gp_filter", "markov_gp_marginals"]


def _times(owner: str, x: Tensor, y: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``t [N]`` from inputs ``x [N, 1]`` (as ``ExactGP`` takes them) or ``x [N]``."""
    if isinstance(x, Tensor) and x.dim() == 1:
        x = x.unsqueeze(-1)
    check_data(owner, x, y, dtype=dtype)
    if x.shape[-1] != 1:
        raise ValueError(f"{owner}: a Markov GP is a function of time: X must be [N, 1] or [N]; got {tuple(x.shape)}")
    return x[:, 0]


def markov_gp_filter(
    form: StateSpaceForm,
    t: Tensor,
    y: Tensor,
    noise_var: Tensor,
    observed: Tensor | None = None,
    parallel: bool = True,
) -> tuple[FilterResult, Tensor]:
    """Kalman filter of ``y_i = f(t_i) + N(0, noise_var_i)`` for sorted times ``t [T]``.

    Args:
        form: the kernel's `StateSpaceForm`.
        t: ``[T]`` non-decreasing times; y: ``[T]``; noise_var: ``[T]`` or scalar.
        observed: optional ``[T]`` boolean mask (``False``: a time to predict at, no data).
        parallel: associative scan (default) or the sequential loop.

    Returns:
        The `FilterResult` (time first, ``p = 1``) and the transitions ``A [T-1, D, D]``.
    """
    T, D = t.shape[0], form.F.shape[-1]
    A, Q = discretize(form, t.diff())
    H = form.H.expand(T, 1, D)
    R = noise_var.reshape(-1, 1, 1).expand(T, 1, 1)
    m1 = form.Pinf.new_zeros(D)
    res = tv_kalman_filter(A, Q, H, R, m1, form.Pinf, y.reshape(T, 1), observed, parallel=parallel)
    return res, A


def markov_gp_marginals(
    form: StateSpaceForm,
    t: Tensor,
    y: Tensor,
    noise_var: Tensor,
    t_new: Tensor | None = None,
    parallel: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Posterior marginals of ``f`` at the data times (and at ``t_new``) and ``log p(y)``.

    Times need not be sorted.  Returns ``log p(y)`` (scalar), ``mean [N]``, ``var [N]``
    at ``t``, and ``mean [M]``, ``var [M]`` at ``t_new`` (``None`` without it).
    """
    n = t.shape[0]
    noise_var = noise_var.expand(n) if noise_var.dim() == 0 else noise_var
    if t_new is not None:
        m = t_new.shape[0]
        t = torch.cat([t, t_new])
        y = torch.cat([y, y.new_zeros(m)])
        noise_var = torch.cat([noise_var, noise_var.new_ones(m)])
    observed = None if t_new is None else torch.arange(t.shape[0], device=t.device) < n
    order = torch.argsort(t, stable=True)
    res, A = markov_gp_filter(
        form, t[order], y[order], noise_var[order], None if observed is None else observed[order], parallel
    )
    log_z = res.log_liks().sum()
    means, covs = tv_smoother(A, res, parallel)
    H = form.H[0]
    f_mean = means @ H
    f_var = ((covs @ H) * H).sum(-1).clamp_min(0.0)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.shape[0], device=order.device)
    f_mean, f_var = f_mean[inv], f_var[inv]
    if t_new is None:
        return log_z, f_mean, f_var, None, None
    return log_z, f_mean[:n], f_var[:n], f_mean[n:], f_var[n:]


class MarkovGP(nn.Module):
    """GP regression on time in linear time: ``ExactGP``'s answers for Markov kernels by Kalman smoothing.

    Args:
        kernel: a `vitorch.models.gp` kernel with a state-space form (see
            `vitorch.models.ssm.sde_kernels.state_space`); its hyperparameters train as usual.
        noise: observation noise variance ``sigma^2`` (positive, learnable).
        mean: prior mean module (``ZeroMean`` if None), called on ``X [N, 1]``.
        num_harmonics: harmonics kept for each `Periodic` factor.
        parallel: ``True``/``False`` forces the associative scan / the sequential loop; by
            default the scan for ``T >= 16``.

    Shapes: inputs ``X [N, 1]`` (or ``[N]``) of times, in any order, targets ``y [N]``, test
    times ``X_new [N*, 1]``; ``forward((X, y))`` gives ``loss []`` and ``bound [N]``, as
    ``ExactGP`` does (``log p(y) / N`` per datum).

    Example:
        >>> k = gp.Matern32(lengthscale=0.5) + gp.Product(gp.Periodic(period=1.0), gp.Matern32(lengthscale=5.0))
        >>> model = ssm.MarkovGP(k, noise=0.1)
        >>> model.log_marginal_likelihood(t, y)        # = gp.ExactGP(k, 0.1).log_marginal_likelihood(t, y)
        >>> vt.fit(model, (t, y), steps=200, batch_size=len(t), lr=0.05)
        >>> mean, var = model.predict(t, y, t_new)

    References:
        Hartikainen & Särkkä, *Kalman Filtering and Smoothing Solutions to Temporal Gaussian Process
        Regression Models* (MLSP 2010); Särkkä & Solin, *Applied Stochastic Differential Equations*
        (CUP 2019), ch. 12; Solin & Särkkä, *Explicit Link Between Periodic Covariance Functions and
        State Space Models* (AISTATS 2014).
    """

    def __init__(
        self,
        kernel: Kernel,
        noise: float | Tensor = 1.0,
        mean: nn.Module | None = None,
        num_harmonics: int = 7,
        parallel: bool | None = None,
    ):
        super().__init__()
        if not isinstance(kernel, Kernel):
            raise TypeError(f"MarkovGP: kernel must be a vitorch.models.gp Kernel; got {type(kernel).__name__}")
        self.kernel = kernel
        self.likelihood = GaussianLikelihood(noise)
        self.mean = mean if mean is not None else ZeroMean()
        self.num_harmonics = num_harmonics
        self.parallel = parallel
        state_space(kernel, num_harmonics)  # raise now for a kernel with no state-space form

    @property
    def noise(self) -> Tensor:
        return self.likelihood.noise

    def state_space(self) -> StateSpaceForm:
        """The kernel's `StateSpaceForm` at the current hyperparameters."""
        return state_space(self.kernel, self.num_harmonics)

    def _parallel(self, n: int) -> bool:
        return n >= 16 if self.parallel is None else bool(self.parallel)

    def _marginals(self, x: Tensor, y: Tensor, x_new: Tensor | None = None):
        dtype = module_dtype(self)
        t = _times("MarkovGP", x, y, dtype)
        t_new = None if x_new is None else _times("MarkovGP", x_new, None, dtype)
        r = y - self.mean(t.unsqueeze(-1))
        n = t.shape[0] + (0 if t_new is None else t_new.shape[0])
        return markov_gp_marginals(self.state_space(), t, r, self.noise.reshape(()), t_new, self._parallel(n))

    def log_marginal_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """``log N(y; m(X), K + sigma^2 I)`` for ``x [N, 1]``, ``y [N]``; a scalar, in ``O(N)``."""
        dtype = module_dtype(self)
        t = _times("MarkovGP", x, y, dtype)
        order = torch.argsort(t, stable=True)
        r = (y - self.mean(t.unsqueeze(-1)))[order]
        res, _ = markov_gp_filter(self.state_space(), t[order], r, self.noise.reshape(()), None, self._parallel(len(t)))
        return res.log_liks().sum()

    def forward(self, batch: tuple[Tensor, Tensor]) -> LossOutput:
        """``bound [N]`` equal to ``log p(y) / N`` in every entry and ``loss = -log p(y) / N``, on the whole series."""
        x, y = unpack_batch("MarkovGP", batch)
        per_datum = self.log_marginal_likelihood(x, y) / y.shape[0]
        return LossOutput(-per_datum, per_datum.expand(y.shape[0]))

    def predict(self, x: Tensor, y: Tensor, x_new: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance of the latent ``f`` at ``x_new [N*, 1]``, each ``[N*]``."""
        _, _, _, mean, var = self._marginals(x, y, x_new)
        t_new = x_new if x_new.dim() == 2 else x_new.unsqueeze(-1)
        return self.mean(t_new) + mean, var

    def predict_y(self, x: Tensor, y: Tensor, x_new: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of noisy ``y`` at ``x_new``, each ``[N*]``."""
        return self.likelihood.predict(*self.predict(x, y, x_new))

    def extra_repr(self) -> str:
        return f"num_harmonics={self.num_harmonics}, parallel={self.parallel}"
