"""Variational Bayesian last layer for regression (Harrison, Willes & Snoek, 2024).

Model: ``y = W phi + eps`` with ``W [O, D]``, prior rows ``w_i ~ N(0, s^2 I)`` and
noise ``eps ~ N(0, Sigma)``, ``Sigma = diag(sigma_1^2, ..., sigma_O^2)``.  With the
row-independent posterior ``q(W) = prod_i N(m_i, S_i)`` the expected log-likelihood
is available in closed form, so the objective needs no sampling:

    ELBO = sum_n [ log N(y_n | M phi_n, Sigma) - 1/2 sum_i phi_n^T S_i phi_n / sigma_i^2 ]
           - KL(q(W) || p(W))  <=  log p(Y | Phi).

When ``Sigma`` is learned it gets an inverse-Wishart prior ``IW(psi I, nu)`` and is a
point estimate (the paper's Wishart regularizer); training minimizes the scaled form
``-(1/N) [ELBO + log p(Sigma)]`` on minibatches.  Because the family contains the
exact posterior, ``ELBO = log p(Y)`` at ``q = p(W | Y)`` (the key test).  The predictive
is ``N(M phi, diag(phi^T S_i phi) + Sigma)``.

`VBLLRegression.mc_loss` gives the same model to `vitorch.loss`, so any
core objective and estimator can be set beside the deterministic one.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from ... import estimators as _estimators
from ... import objectives as _objectives
from ...kernels.vbll_regression import vbll_regression_bound
from ...loss import LossOutput
from ...loss import loss as _vt_loss
from . import _checks, _evidence, _legacy
from .covariance import Dense, DensePrecision, Diagonal, WeightPosterior
from .output import LastLayerOutput

__all__ = ["VBLLRegression"]

_LOG_2PI = math.log(2 * math.pi)


class VBLLRegression(nn.Module):
    """Regression head with a Gaussian weight posterior and a deterministic ELBO.

    Args:
        in_features: D, the feature dimension.
        out_features: O, the number of outputs.
        prior_scale: ``s``, prior standard deviation of every weight.
        noise_variance: ``sigma^2`` (fixed, or the initial value when learned).
        learn_noise: learn the diagonal noise covariance under an inverse-Wishart prior.
        covariance: factory ``(out_features, in_features, init_variance=...) ->``
            `vitorch.models.last_layer.covariance.WeightPosterior`:
            ``Dense`` (default), ``Diagonal``, ``LowRank.with_rank(R)`` or ``DensePrecision``.
        wishart_scale: ``psi`` of the inverse-Wishart noise prior ``IW(psi I, nu)``.
        wishart_dof: ``nu`` of that prior.

    State: ``weights`` (the posterior's own parameters, e.g. ``mean [O, D]`` and the raw
    Cholesky factor ``raw_tril [O, D, D]`` for ``Dense``), ``log_noise_variance [O]`` (a
    parameter when learned, else a buffer) and the number ``prior_scale`` (which
    `solve_posterior` with ``tune=True`` changes; kept in ``state_dict`` as extra state).

    Example:
        >>> head = VBLLRegression(64, prior_scale=1.0, noise_variance=0.5, learn_noise=False)
        >>> out = head.loss(phi, y, num_data=len(train_set))     # LossOutput: out.loss, out.bound [B]
        >>> head(phi).predictive                                  # Normal, batch [N]
        >>> head.solve_posterior(phi_all, y_all, tune=True)       # closed-form refit at the evidence maximum

    To train features and head end to end with `vitorch.fit`, wrap them in
    `vitorch.models.last_layer.VBLLModel`.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the deterministic regression ELBO and the Wishart noise prior; MacKay,
        *Bayesian Interpolation* (1992) for the type-II tuning of ``solve_posterior(tune=True)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        prior_scale: float = 1.0,
        noise_variance: float = 1.0,
        learn_noise: bool = True,
        *,
        covariance: Callable[..., WeightPosterior] = Dense,
        wishart_scale: float = 1e-2,
        wishart_dof: float = 1.0,
    ):
        super().__init__()
        owner = type(self).__name__
        self.in_features = _checks.positive_int(owner, "in_features", in_features)
        self.out_features = _checks.positive_int(owner, "out_features", out_features)
        self.prior_scale = _checks.positive_float(owner, "prior_scale", prior_scale)
        self.wishart_scale = _checks.positive_float(owner, "wishart_scale", wishart_scale)
        self.wishart_dof = _checks.positive_float(owner, "wishart_dof", wishart_dof)
        v = _checks.positive_float(owner, "noise_variance", noise_variance)
        self.learn_noise = bool(learn_noise)
        # q starts at the prior's covariance: the KL term is then zero at initialization.
        self.weights = covariance(out_features, in_features, init_variance=self.prior_scale**2)
        if not isinstance(self.weights, WeightPosterior):
            raise ValueError(f"{owner}: covariance must build a WeightPosterior; got {type(self.weights).__name__}")
        self._init_noise(torch.full((out_features,), math.log(v)))

    def _init_noise(self, log_v: Tensor) -> None:
        if self.learn_noise:
            self.log_noise_variance = nn.Parameter(log_v)
        else:
            self.register_buffer("log_noise_variance", log_v)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state saved by vitorch <= 0.4: a packed dense posterior (the learned noise in its
        # spare entry), or a noise it did not pack as ``log_noise``
        converted = [k for k in (prefix + "weights.packed", prefix + "log_noise") if k in state_dict]
        spare = _legacy.unpack_posterior(state_dict, prefix + "weights.", self.in_features)
        if spare is not None and spare.shape[1] >= 1:
            state_dict.setdefault(prefix + "log_noise_variance", spare[:, 0].clone())
        _legacy.rename(state_dict, prefix + "log_noise", prefix + "log_noise_variance")
        _legacy.warn(converted)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----- pieces of the objective

    # The prior scale is a number (the fused kernel caches its constants per value);
    # ``solve_posterior(tune=True)`` changes it, so it travels in ``state_dict`` as extra state.
    def get_extra_state(self) -> dict:
        return {"prior_scale": self.prior_scale}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or "prior_scale" not in state:
            raise ValueError(f"{type(self).__name__}: extra state must be a dict with 'prior_scale'; got {state!r}")
        self.prior_scale = _checks.positive_float(type(self).__name__, "prior_scale", state["prior_scale"])

    @property
    def noise_variance(self) -> Tensor:
        """``[O]`` diagonal of ``Sigma``."""
        return self.log_noise_variance.exp()

    def _noise_parameter(self) -> Tensor:
        """The tensor that stores the noise (its changes measure the closed-form solver's convergence)."""
        return self.log_noise_variance

    def _check(self, phi: Tensor, y: Tensor | None = None, values: bool = True) -> tuple[Tensor, Tensor | None]:
        owner = type(self).__name__
        _checks.features(owner, phi, self.in_features, values)
        if y is None:
            return phi, None
        y = _checks.targets(owner, y, phi.shape[0], self.out_features, values)
        return phi, y if y.dtype == phi.dtype else y.to(phi.dtype)

    def _bound(self, phi: Tensor, y: Tensor, num_data: int, noise_prior: bool) -> tuple[Tensor, Tensor]:
        """``(bound [B], loss [])`` with ``penalty = KL(q(W) || p(W)) - log p(Sigma)`` (the noise's
        log prior only with ``noise_prior`` and a learned noise), by
        `vitorch.kernels.vbll_regression_bound`, which picks the fused backend for ``Dense``."""
        a, psi = (0.0, 0.0)
        if noise_prior and self.learn_noise:
            a, psi = 0.5 * (self.wishart_dof + self.out_features + 1), self.wishart_scale
        w = self.weights
        return vbll_regression_bound(
            phi, y, w.mean, w.row_covariance(), self.log_noise_variance, self.prior_scale**2, num_data, a, psi
        )

    def kl(self) -> Tensor:
        """``KL(q(W) || p(W))``, a scalar."""
        return self.weights.kl_to_isotropic(self.prior_scale**2).sum()

    def noise_log_prior(self) -> Tensor:
        """``log IW(Sigma | psi I, nu)`` up to a constant: ``sum_i [-(nu+O+1)/2 log sigma_i^2 - psi/(2 sigma_i^2)]``."""
        if not self.learn_noise:
            return self.log_noise_variance.new_zeros(())
        a = 0.5 * (self.wishart_dof + self.out_features + 1)
        return -(a * self.log_noise_variance + 0.5 * self.wishart_scale / self.noise_variance).sum()

    def elbo(self, phi: Tensor, y: Tensor) -> Tensor:
        """The deterministic ELBO summed over the data, a lower bound on ``log p(Y | Phi, Sigma)`` (scalar).

        Args:
            phi: ``[N, D]`` features.
            y: ``[N, O]`` targets (``[N]`` when ``O = 1``).
        """
        phi, y = self._check(phi, y)
        # with N = the batch, sum_n bound_n = sum_n E log p(y_n) - KL
        return self._bound(phi, y, phi.shape[0], noise_prior=False)[0].sum()

    def loss(self, phi: Tensor, y: Tensor, num_data: int) -> LossOutput:
        """The minibatch bound as a `vitorch.LossOutput` (the model protocol's convention).

        ``bound [B] = E_q log p(y_n | phi_n) - (KL - log p(Sigma)) / N``, each datum's share
        of the full-data objective ``ELBO + log p(Sigma)``, and ``loss = -mean(bound)``: what
        `vitorch.LossOutput.from_terms` makes of those terms, computed by one kernel call.

        This is the training step's hot path: it checks types and shapes but reads no
        values (a NaN or infinite input gives a non-finite loss, which
        `vitorch.fit` stops on, naming the step); `elbo`,
        `solve_posterior` and `predictive` reject non-finite inputs with a
        ``ValueError``.

        Args:
            phi: ``[B, D]`` minibatch features.
            y: ``[B, O]`` (or ``[B]``) minibatch targets.
            num_data: N, the size of the training set, which weighs the KL.
        """
        phi, y = self._check(phi, y, values=False)
        _checks.num_data(type(self).__name__, num_data, phi.shape[0])
        bound, loss = self._bound(phi, y, num_data, noise_prior=True)
        return LossOutput(loss, bound)

    # ----- prediction

    def predictive(self, phi: Tensor) -> Distribution:
        """``N(M phi, diag(phi^T S_i phi) + Sigma)``: ``Normal [N]`` if ``O = 1``, else ``Independent(Normal)``."""
        phi, _ = self._check(phi)
        mean = phi @ self.weights.mean.mT
        scale = (self.weights.quad(phi) + self.noise_variance).sqrt()
        if self.out_features == 1:
            return Normal(mean.squeeze(-1), scale.squeeze(-1))
        return Independent(Normal(mean, scale), 1)

    def forward(self, phi: Tensor) -> LastLayerOutput:
        return LastLayerOutput(self.predictive(phi))

    # ----- post hoc fitting on frozen features

    @torch.no_grad()
    def _closed_form_step(self, phi: Tensor, y: Tensor) -> None:
        """Optimal q(W) given Sigma: the exact row posteriors (or their KL projection)."""
        prec_noise = 1.0 / self.noise_variance  # [O]
        eye = torch.eye(self.in_features, dtype=phi.dtype, device=phi.device)
        gram = phi.mT @ phi
        precision = gram * prec_noise[:, None, None] + eye / self.prior_scale**2  # [O, D, D]
        rhs = (phi.mT @ y).mT * prec_noise[:, None]  # [O, D]
        mean = torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(precision)).squeeze(-1)
        self.weights.set_posterior(mean, precision)

    @torch.no_grad()
    def _noise_step(self, phi: Tensor, y: Tensor) -> None:
        """Optimal Sigma given q: ``sigma_i^2 = (R_i + psi) / (N + nu + O + 1)`` (ELBO plus IW prior)."""
        resid = (y - phi @ self.weights.mean.mT).pow(2) + self.weights.quad(phi)
        n = phi.shape[0]
        var = (resid.sum(0) + self.wishart_scale) / (n + self.wishart_dof + self.out_features + 1)
        self.log_noise_variance.copy_(var.log())

    def _refine(self, phi: Tensor, y: Tensor, steps: int) -> None:
        # Families without a closed-form optimum (low rank) are polished by L-BFGS on
        # the ELBO at fixed noise, starting from the mean-field optimum.
        params = list(self.weights.parameters())
        opt = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

        def closure():
            opt.zero_grad()
            value = -self.elbo(phi, y)
            value.backward()
            return value

        opt.step(closure)

    def solve_posterior(
        self,
        phi: Tensor,
        y: Tensor,
        max_iters: int = 200,
        tol: float = 1e-10,
        refine_steps: int = 200,
        *,
        tune: bool = False,
    ) -> VBLLRegression:
        """The optimal ``q(W)`` (and noise) on frozen features, in closed form; returns ``self``.

        With fixed noise one closed-form step is exact for ``Dense``, ``DensePrecision``
        and ``Diagonal``; learned noise alternates it with the closed-form noise update
        until the log-variances move less than ``tol``.  ``LowRank`` is then refined by
        ``refine_steps`` L-BFGS iterations on the ELBO.

        With ``tune=True`` the prior scale and the noise variances are first set by
        type-II maximum likelihood: the maximizer of the exact evidence ``log p(Y |
        Phi)`` (one prior scale shared by the rows, one noise variance per output; the
        inverse-Wishart prior is not used), found by MacKay's fixed point from the
        current values.  The posterior is then the exact one at those hyperparameters
        (for the dense forms; the KL projection onto ``Diagonal`` / ``LowRank``).  This
        overwrites ``prior_scale`` and the noise, fixed or learned; both are kept in
        ``state_dict``.  Cost: one ``D x D`` eigendecomposition, a few ``[D, O]``
        operations per iteration, and one Cholesky factorization per output.

        Args:
            phi: ``[N, D]`` features.
            y: ``[N, O]`` (or ``[N]``) targets.
            max_iters: iterations at most (noise alternation or fixed point).
            tol: stop when the log-hyperparameters move less than this.
            refine_steps: L-BFGS iterations for ``LowRank``.
            tune: choose ``prior_scale`` and the noise by maximizing the evidence.

        References:
            MacKay, *Bayesian Interpolation* (1992); Bishop, *PRML* (2006), Sec. 3.5.2.
        """
        phi, y = self._check(phi, y)
        if tune:
            self._tune(phi, y, max_iters, tol)
        for _ in range(max_iters if self.learn_noise and not tune else 1):
            self._closed_form_step(phi, y)
            if not self.learn_noise or tune:
                break
            old = self._noise_parameter().detach().clone()
            self._noise_step(phi, y)
            if bool(((self._noise_parameter() - old).abs() < tol).all()):
                break
        if not isinstance(self.weights, (Dense, DensePrecision, Diagonal)):
            self._refine(phi, y, refine_steps)
        return self

    def fit(self, phi: Tensor, y: Tensor, *args, **kwargs) -> VBLLRegression:
        """Deprecated alias of `solve_posterior` (``fit`` is `vitorch.fit`'s name).

        Args and shapes as `solve_posterior`: ``phi [N, D]``, ``y [N, O]``.

        References:
            MacKay, *Bayesian Interpolation* (1992).
        """
        _legacy.deprecated_fit(self)
        return self.solve_posterior(phi, y, *args, **kwargs)

    @torch.no_grad()
    def _tune(self, phi: Tensor, y: Tensor, max_iters: int, tol: float) -> None:
        log_s = torch.tensor(math.log(self.prior_scale), dtype=phi.dtype, device=phi.device)
        log_s, log_v = _evidence.tune(phi, y, log_s, self.log_noise_variance.detach(), max_iters, tol)
        self.prior_scale = float(log_s.exp())
        self.log_noise_variance.copy_(log_v)

    def log_evidence(self, phi: Tensor, y: Tensor) -> Tensor:
        """``log p(Y | Phi)`` at the head's prior scale and noise (no inverse-Wishart term), a scalar.

        The exact marginal likelihood that `elbo` bounds and that
        ``solve_posterior(..., tune=True)`` maximizes.

        Args:
            phi: ``[N, D]`` features.
            y: ``[N, O]`` (or ``[N]``) targets.
        """
        phi, y = self._check(phi, y)
        log_s = torch.tensor(math.log(self.prior_scale), dtype=phi.dtype, device=phi.device)
        return _evidence.log_evidence(phi, y, log_s, self.log_noise_variance.to(phi))

    # ----- Monte Carlo variant through vitorch.loss

    def mc_loss(
        self,
        phi: Tensor,
        y: Tensor,
        num_data: int,
        num_particles: int = 1,
        objective: _objectives.Objective = _objectives.elbo,
        estimator: _estimators.Estimator = _estimators.reparam,
    ) -> LossOutput:
        """The sampled counterpart of `loss`, through `vitorch.loss`.

        Particles are weight matrices ``W [K, O, D]`` from ``q(W)``; the rows are
        the batch of the bound (the outputs are independent given the diagonal noise),
        and the log-joint of row ``i`` is ``(N/B) sum_batch log N(y_ni | w_i^T phi_n,
        sigma_i^2) + log N(w_i | 0, s^2 I)``.

        Returns:
            `vitorch.LossOutput` whose ``loss`` is on the scale of `loss`
            (the row bounds summed, divided by N, noise log-prior included) and whose
            ``bound [O]`` estimates each row's full-data bound.
        """
        phi, y = self._check(phi, y)
        _checks.num_data(type(self).__name__, num_data, phi.shape[0])
        scale = num_data / phi.shape[0]
        std = self.noise_variance.sqrt()[:, None]  # [O, 1]

        def log_joint(w: Tensor) -> Tensor:
            pred = torch.einsum("kod,nd->kon", w, phi)  # [K, O, B]
            log_lik = Normal(pred, std).log_prob(y.mT).sum(-1)
            log_prior = Normal(0.0, self.prior_scale).log_prob(w).sum(-1)
            return scale * log_lik + log_prior

        out = _vt_loss(log_joint, self.weights.distribution(), num_particles, objective, estimator)
        total = (self.out_features * out.loss - self.noise_log_prior()) / num_data
        return LossOutput(loss=total, bound=out.bound, log_w=out.log_w, z=out.z)
