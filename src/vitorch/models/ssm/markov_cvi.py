"""Variational Markov GPs for non-Gaussian likelihoods: conjugate-computation VI with Kalman smoothing.

The posterior is Gaussian and Markov: the prior times one Gaussian *site* per datum,

    q(f) ∝ p(f) prod_i N(y~_i; f(t_i), v~_i),

so every marginal of ``q``, and ``log Z~ = log int p(f) prod_i N(y~_i; f_i, v~_i) df``,
come from the Kalman filter and smoother of the pseudo-data ``(y~, v~)`` in ``O(T)``.
The ELBO is then closed form given the marginals ``(m_i, s_i)``::

    ELBO = sum_i E_q[log p(y_i | f_i)] - KL(q || p),
    KL   = sum_i E_q[log N(y~_i; f_i, v~_i)] - log Z~.

Sites move by conjugate-computation VI (Khan & Lin, 2017): with the site's natural
parameters ``lam = (y~ / v~, -1 / (2 v~))`` and the mean parameters ``mu = (m, m^2 + s)``,

    lam <- (1 - beta) lam + beta * d E_q[log p(y | f)] / d mu,

a natural-gradient step on the ELBO that, for a Gaussian likelihood and ``beta = 1``,
lands on the exact posterior in one step (tested).  The gradient is taken by autograd
through the likelihood's ``expected_log_prob`` (closed form for `Poisson`), so any
`vitorch.models.gp` likelihood works.  Kernel hyperparameters learn by gradient steps
on the ELBO with the sites held fixed, alternating with site updates, as in Chang et
al. (2020) and the cvHM method of Dowling, Zhao & Park (2023), who derive the same
sites and run them through (information-form) Kalman smoothing.

References:
    Khan & Lin, Conjugate-Computation Variational Inference (AISTATS 2017).
    Chang, Wilkinson, Khan & Solin, Fast Variational Learning in State-Space Gaussian Process
    Models (MLSP 2020).
    Dowling, Zhao & Park, Linear Time GPs for Inferring Latent Trajectories from Neural Spike
    Trains (ICML 2023).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...loss import LossOutput
from ..gp.kernels import Kernel
from ..gp.likelihoods import Likelihood
from ..gp.linalg import module_dtype, unpack_batch
from ..gp.means import ZeroMean
from .markov_gp import _times, markov_gp_marginals
from .sde_kernels import StateSpaceForm, state_space

__all__ = ["MarkovVariationalGP"]

_LOG_2PI = math.log(2 * math.pi)


class MarkovVariationalGP(nn.Module):
    """A GP on time with any likelihood: Gauss–Markov posterior from CVI sites and Kalman smoothing.

    Args:
        kernel: a `vitorch.models.gp` kernel with a state-space form.
        likelihood: a `vitorch.models.gp` likelihood (e.g. ``gp.Poisson()`` for spike counts).
        num_data: ``N``, the length of the one series the sites belong to.
        mean: prior mean module (``ZeroMean`` if None).
        num_harmonics: harmonics per `Periodic` factor.
        cvi_lr: ``beta`` in (0, 1], the CVI step size.
        cvi_steps: CVI site updates run at the start of each ``forward`` in training mode
            (0: sites move only through `update_sites`).
        parallel: scan (``True``), loop (``False``) or by length (``None``: scan for ``N >= 16``).

    Sites are buffers (``site_nat1``, ``site_nat2``, each ``[N]``), initialized to weak
    pseudo-observations ``N(0, 1e2)``.  ``forward((X, y))`` on the whole series returns
    ``vt.LossOutput.from_terms(E_q log p(y_i | f_i) [N], KL, N)``: ``bound [N]`` sums to
    the ELBO and ``loss = -ELBO / N``, with gradients for the hyperparameters.

    Example:
        >>> model = ssm.MarkovVariationalGP(gp.Matern32(lengthscale=5.0), gp.Poisson(), num_data=len(t))
        >>> model.update_sites(t, y, steps=20)            # inference at fixed hyperparameters
        >>> vt.fit(model, (t, y), steps=100, batch_size=len(t), lr=0.05)   # alternates sites / hyperparameters
        >>> mean, var = model.predict(t, y, t_new)        # latent f; model.predict_y for counts

    References:
        Khan & Lin, *Conjugate-Computation Variational Inference* (AISTATS 2017); Chang, Wilkinson,
        Khan & Solin, *Fast Variational Learning in State-Space Gaussian Process Models* (MLSP 2020);
        Dowling, Zhao & Park, *Linear Time GPs for Inferring Latent Trajectories from Neural Spike
        Trains* (ICML 2023).
    """

    def __init__(
        self,
        kernel: Kernel,
        likelihood: Likelihood,
        num_data: int,
        mean: nn.Module | None = None,
        num_harmonics: int = 7,
        cvi_lr: float = 1.0,
        cvi_steps: int = 1,
        parallel: bool | None = None,
    ):
        super().__init__()
        if not isinstance(kernel, Kernel):
            raise TypeError(
                f"MarkovVariationalGP: kernel must be a vitorch.models.gp Kernel; got {type(kernel).__name__}"
            )
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                "MarkovVariationalGP: likelihood must be a vitorch.models.gp Likelihood; "
                f"got {type(likelihood).__name__}"
            )
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
            raise ValueError(f"MarkovVariationalGP: num_data must be a positive integer; got {num_data!r}")
        if not 0 < cvi_lr <= 1:
            raise ValueError(f"MarkovVariationalGP: cvi_lr must lie in (0, 1]; got {cvi_lr}")
        if isinstance(cvi_steps, bool) or not isinstance(cvi_steps, int) or cvi_steps < 0:
            raise ValueError(f"MarkovVariationalGP: cvi_steps must be a non-negative integer; got {cvi_steps!r}")
        self.kernel, self.likelihood = kernel, likelihood
        self.mean = mean if mean is not None else ZeroMean()
        self.num_data, self.num_harmonics = num_data, num_harmonics
        self.cvi_lr, self.cvi_steps, self.parallel = cvi_lr, cvi_steps, parallel
        dtype = torch.get_default_dtype()
        self.register_buffer("site_nat1", torch.zeros(num_data, dtype=dtype))
        self.register_buffer("site_nat2", torch.full((num_data,), -0.5 / 100.0, dtype=dtype))
        state_space(kernel, num_harmonics)  # raise now for a kernel with no state-space form

    def state_space(self) -> StateSpaceForm:
        """The kernel's `StateSpaceForm` at the current hyperparameters."""
        return state_space(self.kernel, self.num_harmonics)

    def sites(self) -> tuple[Tensor, Tensor]:
        """Pseudo-observations ``y~ [N]`` and their variances ``v~ [N]``."""
        var = -0.5 / self.site_nat2
        return self.site_nat1 * var, var

    def _sorted(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Times, targets and prior means in site order, and the permutation to it.

        Site ``i`` belongs to the ``i``-th datum in order of ``(t, y)``, so the sites do not
        depend on the order of the rows (``vt.fit`` may shuffle them).
        """
        t = _times(type(self).__name__, x, y, module_dtype(self))
        if t.shape[0] != self.num_data:
            raise ValueError(
                f"MarkovVariationalGP: the sites belong to a series of N = {self.num_data} points; got X with "
                f"{t.shape[0]} rows (the whole series is one batch)"
            )
        self.likelihood.check_y(y)
        by_y = torch.argsort(y, stable=True)
        perm = by_y[torch.argsort(t[by_y], stable=True)]
        t, y = t[perm], y[perm]
        return t, y, self.mean(t.unsqueeze(-1)), perm

    def _posterior(self, t: Tensor, prior_mean: Tensor, t_new: Tensor | None = None):
        """``log Z~``, marginals of ``f`` at the data ``[N]`` (and at ``t_new``), prior mean added back."""
        y_site, v_site = self.sites()
        n = t.shape[0] + (0 if t_new is None else t_new.shape[0])
        par = n >= 16 if self.parallel is None else bool(self.parallel)
        log_z, m, s, m_new, s_new = markov_gp_marginals(self.state_space(), t, y_site - prior_mean, v_site, t_new, par)
        return log_z, m + prior_mean, s, m_new, s_new

    @torch.no_grad()
    def update_sites(self, x: Tensor, y: Tensor, steps: int = 1, lr: float | None = None) -> None:
        """Run ``steps`` CVI updates of the sites at the current hyperparameters (no gradient)."""
        t, y, prior_mean, _ = self._sorted(x, y)
        beta = self.cvi_lr if lr is None else lr
        for _ in range(steps):
            _, m, s, _, _ = self._posterior(t, prior_mean)
            with torch.enable_grad():
                m_ = m.detach().requires_grad_(True)
                s_ = s.detach().requires_grad_(True)
                g_m, g_s = torch.autograd.grad(self.likelihood.expected_log_prob(y, m_, s_).sum(), (m_, s_))
            # Chain rule from (m, s) to the mean parameters (m, m^2 + s): d/dmu1 = g_m - 2 m g_s, d/dmu2 = g_s.
            nat1, nat2 = g_m - 2 * m * g_s, g_s
            if not bool((nat2 < 0).all()):
                raise ValueError(
                    "MarkovVariationalGP: the likelihood's expected log-density is not concave in f at some point "
                    "(d/ds E log p >= 0), so a Gaussian site would have a non-positive precision"
                )
            self.site_nat1.mul_(1 - beta).add_(beta * nat1)
            self.site_nat2.mul_(1 - beta).add_(beta * nat2)

    def elbo_terms(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``E_q[log p(y_i | f_i)] [N]`` and ``KL(q || p)`` (scalar), differentiable in the hyperparameters."""
        t, y_sorted, prior_mean, perm = self._sorted(x, y)
        log_z, m, s, _, _ = self._posterior(t, prior_mean)
        y_site, v_site = self.sites()
        site_ell = -0.5 * (_LOG_2PI + v_site.log() + ((y_site - m).pow(2) + s) / v_site)
        ell = torch.empty_like(m)
        ell[perm] = self.likelihood.expected_log_prob(y_sorted, m, s)
        return ell, site_ell.sum() - log_z

    def elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """The ELBO of the whole series (scalar)."""
        ell, kl = self.elbo_terms(x, y)
        return ell.sum() - kl

    def forward(self, batch: tuple[Tensor, Tensor]) -> LossOutput:
        """``cvi_steps`` site updates (training mode), then ``LossOutput.from_terms(E_q log p [N], KL, N)``."""
        x, y = unpack_batch(type(self).__name__, batch)
        if self.training and self.cvi_steps:
            self.update_sites(x, y, self.cvi_steps)
        ell, kl = self.elbo_terms(x, y)
        return LossOutput.from_terms(ell, kl, self.num_data)

    @torch.no_grad()
    def predict(self, x: Tensor, y: Tensor, x_new: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``f`` under ``q`` at ``x_new [N*, 1]``, each ``[N*]``; ``(x, y)``: the training data."""
        t, _, prior_mean, _ = self._sorted(x, y)
        t_new = _times(type(self).__name__, x_new, None, module_dtype(self))
        _, _, _, m_new, s_new = self._posterior(t, prior_mean, t_new)
        return m_new + self.mean(t_new.unsqueeze(-1)), s_new

    @torch.no_grad()
    def predict_y(self, x: Tensor, y: Tensor, x_new: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of ``y`` at ``x_new``, each ``[N*]``."""
        return self.likelihood.predict(*self.predict(x, y, x_new))
