"""Stochastic variational GP (SVGP): an uncollapsed bound that trains by minibatches.

The variational posterior over inducing values is a vitorch family over ``[M]``
(`vitorch.families.FullRankNormal` or `vitorch.families.DiagNormal`),
either over ``u = f(Z)`` itself or, *whitened*, over ``v`` with ``u = L v`` and
``K_mm = L L^T`` (prior ``N(0, I)``).  For a batch ``X_b`` with ``A = L^{-1} K_mb``:

    whitened:    q(f_b) = N(A^T m,          k_bb - |A|^2 + |S^{1/2 T} A|^2)
    unwhitened:  q(f_b) = N(P^T m,          k_bb - |A|^2 + |S^{1/2 T} P|^2),   P = L^{-T} A = K_mm^{-1} K_mb

(columnwise squared norms), and the bound on ``log p(y)`` is

    ELBO = sum_{n=1}^N E_{q(f_n)} log p(y_n | f_n) - KL(q || p).

``forward((X_b, y_b))`` returns each datum's share ``E_q log p(y_n | f_n) - KL / N``
as ``bound [B]`` and ``loss = -mean(bound)`` (the library's one convention, see
``docs/gp.md``); `SVGP.full_data_elbo` gives the minibatch estimate of the
ELBO itself, ``N`` times larger.

Per step: one ``O(M^3 / 3)`` Cholesky of ``K_mm`` and four ``O(M^2 |b|)`` products
(forward and backward, fused in the kernel op `vitorch.kernels.whitened_marginals`);
``K_mm`` is never inverted.  The KL uses the closed forms registered with
``torch.distributions.kl_divergence`` by the core.

`SVGP.natural_gradient_step` (Gaussian likelihood, full-rank q) moves q
along its natural gradient; with step 1 on the full data it lands on the optimal
q of `vitorch.models.gp.SGPR`, where the two bounds coincide.  For any other
likelihood, `vitorch.models.gp.cvi.cvi_step` takes the same step with the
likelihood's sites (conjugate-computation VI).

References:
    Hensman, Fusi & Lawrence, Gaussian Processes for Big Data (UAI 2013);
    Hensman, Matthews & Ghahramani, Scalable Variational Gaussian Process
    Classification (AISTATS 2015).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributions import kl_divergence

from ...families import DiagNormal, FullRankNormal
from ...kernels import whitened_marginals
from ...loss import LossOutput
from .kernels import Kernel
from .likelihoods import GaussianLikelihood, Likelihood
from .linalg import check_data, default_jitter, jittered_cholesky, unpack_batch
from .means import ZeroMean
from .sgpr import inducing_parameter

__all__ = ["SVGP"]


class SVGP(nn.Module):
    """Sparse variational GP with any likelihood and minibatch training.

    Args:
        kernel: covariance function.
        inducing: inducing inputs ``Z [M, D]`` (copied).
        likelihood: observation model, e.g. `GaussianLikelihood`.
        num_data: size ``N`` of the full training set (each datum's bound carries ``KL / N``).
        mean: prior mean module (``ZeroMean`` if None).
        family: ``FullRankNormal`` (default) or ``DiagNormal``, the form of q.
        whiten: parameterize q over ``v = L^{-1} u`` (better conditioned; default) or over ``u``.
        learn_inducing: make ``Z`` trainable.
        jitter: base jitter on ``K_mm`` relative to its mean diagonal (default by dtype).

    Raises:
        ValueError: for a non-positive ``num_data``, an unsupported ``family``, bad ``Z``, or an
            ARD kernel whose number of lengthscales is not ``Z``'s ``D``.
        TypeError: if ``Z``'s dtype differs from the kernel's.

    Example:
        >>> model = SVGP(RBF(), Z, GaussianLikelihood(0.1), num_data=N)
        >>> out = model((X_b, y_b))                # LossOutput: out.loss = -mean(out.bound), the -ELBO / N estimate
        >>> vt.fit(model, (X, y), epochs=10, batch_size=256)
        >>> mean, var = model.predict(X_test)      # latent f, each [N*]

    Shapes: ``forward((X_b [B, D], y_b [B]))`` gives ``loss []`` and ``bound [B]``;
    ``full_data_elbo(X_b, y_b)`` is a scalar (the minibatch estimate of the full-data bound);
    ``predict(X [N*, D])`` gives mean and variance ``[N*]``; ``q`` is over ``u [M]``.

    References:
        Hensman, Fusi & Lawrence, *Gaussian Processes for Big Data* (UAI 2013).
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015).
    """

    def __init__(
        self,
        kernel: Kernel,
        inducing: Tensor,
        likelihood: Likelihood,
        num_data: int,
        mean: nn.Module | None = None,
        family: type = FullRankNormal,
        whiten: bool = True,
        learn_inducing: bool = True,
        jitter: float | None = None,
    ):
        super().__init__()
        if isinstance(num_data, bool) or int(num_data) != num_data or int(num_data) < 1:
            raise ValueError(f"SVGP: num_data must be a positive integer; got {num_data!r}")
        if family not in (FullRankNormal, DiagNormal):
            raise ValueError(f"SVGP: family must be FullRankNormal or DiagNormal; got {family!r}")
        self.kernel, self.likelihood = kernel, likelihood
        self.mean = mean if mean is not None else ZeroMean()
        self.num_data, self.family, self.whiten = int(num_data), family, bool(whiten)
        z = inducing_parameter(inducing, "SVGP", learn_inducing, kernel)
        if learn_inducing:
            self.inducing = z
        else:
            self.register_buffer("inducing", z)
        self.jitter = default_jitter(z.dtype) if jitter is None else float(jitter)
        m = z.shape[0]
        self.q_loc = nn.Parameter(z.new_zeros(m))
        # The diagonal of q's square root is stored unconstrained, as in GPflow and GPyTorch: only
        # S = R R^T matters, so a sign flip is harmless and is undone column-wise in q().
        self.q_diag = nn.Parameter(z.new_ones(m))
        if family is FullRankNormal:
            self.q_offdiag = nn.Parameter(z.new_zeros(m, m))
        if not self.whiten:  # start at the prior, q(u) = N(0, K_mm)
            with torch.no_grad():
                self._set_q_params(z.new_zeros(m), self._chol_kmm())

    # -- q(u) --------------------------------------------------------------------
    def _q_root(self) -> Tensor:
        """A lower-triangular square root of q's covariance, possibly with negative diagonal entries."""
        if self.family is DiagNormal:
            return torch.diag_embed(self.q_diag)
        return self.q_offdiag.tril(-1) + torch.diag_embed(self.q_diag)

    def _q_tril(self) -> Tensor:
        """The Cholesky factor of q's covariance: the root with each column's sign set by its diagonal."""
        return self._q_root() * torch.where(self.q_diag < 0, -1.0, 1.0).to(self.q_diag.dtype)

    def q(self) -> FullRankNormal | DiagNormal:
        """The variational distribution over ``v`` (whitened) or ``u``, event shape ``[M]``."""
        if self.family is DiagNormal:
            return DiagNormal(self.q_loc, self.q_diag.abs(), validate_args=False)
        return FullRankNormal(self.q_loc, self._q_tril(), validate_args=False)

    def _set_q_params(self, loc: Tensor, tril: Tensor) -> None:
        self.q_loc.copy_(loc)
        self.q_diag.copy_(tril.diagonal())
        if self.family is FullRankNormal:
            self.q_offdiag.copy_(tril.tril(-1))

    def set_q(self, q: FullRankNormal | DiagNormal) -> None:
        """Overwrite q's parameters with those of ``q`` (same parameterization, whitened or not)."""
        tril = q.scale_tril
        if self.family is DiagNormal and bool((tril.tril(-1) != 0).any()):
            raise ValueError("SVGP: cannot store a correlated q in a DiagNormal family")
        with torch.no_grad():
            self._set_q_params(q.loc, tril)

    def variational_parameters(self) -> list[nn.Parameter]:
        """q's parameters (e.g. to exclude them from Adam when using natural gradients)."""
        return [p for n, p in self.named_parameters() if n.startswith("q_")]

    def hyperparameters(self) -> list[nn.Parameter]:
        """Every parameter except q's: kernel, likelihood, mean and inducing inputs."""
        return [p for n, p in self.named_parameters() if not n.startswith("q_")]

    # -- the bound -----------------------------------------------------------------
    def _chol_kmm(self) -> Tensor:
        return self._cholesky(self.kernel(self.inducing))

    def prior(self, l_mm: Tensor | None = None) -> DiagNormal | FullRankNormal:
        """The prior over q's variable: ``N(0, I)`` whitened, ``N(0, K_mm)`` otherwise."""
        m = self.inducing.shape[0]
        zeros = self.q_loc.new_zeros(m)
        if self.whiten:
            return DiagNormal(zeros, torch.ones_like(zeros), validate_args=False)
        return FullRankNormal(zeros, self._chol_kmm() if l_mm is None else l_mm, validate_args=False)

    def _cholesky(self, k_mm: Tensor) -> Tensor:
        return jittered_cholesky(k_mm, "K_mm", jitter=self.jitter)

    def _marginals(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q(f)`` mean and variance ``[N]`` at ``x``, and the Cholesky factor of ``K_mm``."""
        mean_update, var_update, l_mm = whitened_marginals(
            self.kernel(self.inducing),
            self.kernel(self.inducing, x),
            self.q_loc,
            self._q_root(),
            cholesky=self._cholesky,
            whitened=self.whiten,
        )
        mean = self.mean(x) + mean_update
        var = self.kernel.diag(x) + var_update
        return mean, var.clamp_min(1e-30), l_mm

    def _terms(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        check_data("SVGP", x, y, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        self.likelihood.check_y(y)
        mean, var, l_mm = self._marginals(x)
        return self.likelihood.expected_log_prob(y, mean, var), kl_divergence(self.q(), self.prior(l_mm))

    def forward(self, batch: tuple[Tensor, Tensor]) -> LossOutput:
        """The bound per datum on a minibatch ``batch = (X_b [B, D], y_b [B])``.

        Returns:
            `vitorch.LossOutput` with ``bound [B] = E_q log p(y_n | f_n) - KL / N`` (each
            datum's share of the full-data ELBO) and ``loss = -mean(bound)``, a scalar.
        """
        x, y = unpack_batch("SVGP", batch)
        expected, kl = self._terms(x, y)
        return LossOutput.from_terms(expected, kl, self.num_data)

    def full_data_elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """Unbiased minibatch estimate of the SVGP bound on ``log p(y_{1:N})``, a scalar.

        ``N * mean_b E_q log p(y_b | f_b) - KL``: ``num_data`` times ``-forward((x, y)).loss``.

        Args:
            x: ``[B, D]`` batch inputs.
            y: ``[B]`` batch targets (in the likelihood's support).
        """
        expected, kl = self._terms(x, y)
        return expected.mean() * self.num_data - kl

    def elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """Deprecated name of `full_data_elbo` (a scalar for ``x [B, D]``, ``y [B]``)."""
        warnings.warn(
            "SVGP.elbo is renamed full_data_elbo; for training use model((x, y)).loss (the per-datum "
            "negative bound, -full_data_elbo / num_data)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.full_data_elbo(x, y)

    def kl(self) -> Tensor:
        """``KL(q || p)`` over the inducing variables, a scalar."""
        return kl_divergence(self.q(), self.prior())

    # -- prediction ----------------------------------------------------------------
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``[N]`` of the latent ``f`` at ``x [N, D]``."""
        check_data("SVGP", x, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        mean, var, _ = self._marginals(x)
        return mean, var

    def predict_y(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance ``[N]`` of ``y`` at ``x``."""
        return self.likelihood.predict(*self.predict(x))

    def predict_proba(self, x: Tensor) -> Tensor:
        """``P(y = 1 | x, data)``, ``[N]``, for a binary classification likelihood.

        Raises:
            TypeError: if the likelihood gives no class probabilities (e.g. a Gaussian one).
        """
        proba = getattr(self.likelihood, "predict_proba", None)
        if proba is None:
            raise TypeError(
                f"SVGP.predict_proba: needs a classification likelihood (BernoulliLogit or BernoulliProbit); "
                f"this model's is {type(self.likelihood).__name__} (use predict_y)"
            )
        return proba(*self.predict(x))

    def log_predictive(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(y_n | x_n, data)`` under the approximate posterior, ``[N]``; ``-mean`` is the NLPD."""
        check_data("SVGP", x, y, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        self.likelihood.check_y(y)
        return self.likelihood.log_predictive(y, *self.predict(x))

    # -- natural gradients ------------------------------------------------------------
    @torch.no_grad()
    def natural_gradient_step(self, x: Tensor, y: Tensor, lr: float = 1.0) -> None:
        """One natural-gradient step of size ``lr`` on q for a Gaussian likelihood.

        In natural parameters ``(Lambda m, Lambda)`` of the whitened ``q(v)`` the step is
        ``theta <- (1 - lr) theta + lr theta*`` with ``Lambda* = I + s A A^T / sigma^2``,
        ``(Lambda m)* = s A (y - m(X)) / sigma^2`` and ``s = num_data / |b|`` (Hensman et
        al., 2013, sec. 3).  ``lr = 1`` on the whole data set gives the optimal q.

        Under an initialized ``torch.distributed`` process group of more than one process
        (DDP), the batch's sufficient statistics ``A A^T``, ``A (y - m(X))`` and ``|b|`` are
        summed over all processes with one ``all_reduce``, so every rank takes the step one
        process takes on the union of the ranks' batches and the ranks' q stay identical.
        Every rank must then call it (a collective), each with its own batch.

        Args:
            x: ``[B, D]`` batch inputs (this rank's, under DDP).
            y: ``[B]`` batch targets.
            lr: step size in ``(0, 1]``.

        Raises:
            ValueError: for a non-Gaussian likelihood, a diagonal family or ``lr`` outside ``(0, 1]``.
        """
        if not isinstance(self.likelihood, GaussianLikelihood):
            raise ValueError(
                "SVGP.natural_gradient_step: needs a GaussianLikelihood (closed-form optimum); for any other "
                "likelihood use vitorch.models.gp.cvi.cvi_step(model, x, y, lr)"
            )
        if self.family is not FullRankNormal:
            raise ValueError("SVGP.natural_gradient_step: needs family=FullRankNormal")
        if not 0 < lr <= 1:
            raise ValueError(f"SVGP.natural_gradient_step: lr must lie in (0, 1]; got {lr}")
        check_data("SVGP", x, y, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        l_mm = self._chol_kmm()
        a = torch.linalg.solve_triangular(l_mm, self.kernel(self.inducing, x), upper=False)
        m = a.shape[0]
        eye = torch.eye(m, dtype=a.dtype, device=a.device)
        a_at, a_r, count = _summed_over_ranks(a @ a.mT, a @ (y - self.mean(x)), x.shape[0])
        prec_scale = (self.num_data / count) / self.likelihood.noise
        self._natural_update(eye + prec_scale * a_at, prec_scale * a_r, lr, l_mm)

    def _whitened_q(self, l_mm: Tensor) -> tuple[Tensor, Tensor]:
        """q's mean ``[M]`` and Cholesky factor ``[M, M]`` in whitened coordinates ``v = L^{-1} u``."""
        loc, tril = self.q_loc, self._q_tril()
        if not self.whiten:
            loc = torch.linalg.solve_triangular(l_mm, loc.unsqueeze(-1), upper=False).squeeze(-1)
            root = torch.linalg.solve_triangular(l_mm, tril, upper=False)
            tril = jittered_cholesky(root @ root.mT, "whitened S", jitter=0.0)
        return loc, tril

    @torch.no_grad()
    def _natural_update(self, lam_target: Tensor, eta_target: Tensor, lr: float, l_mm: Tensor) -> None:
        """``theta <- (1 - lr) theta + lr theta*`` in the natural parameters ``(Lambda m, Lambda)`` of the
        whitened q, for a target precision ``lam_target [M, M]`` and ``eta_target [M]``; stores the result.

        Shared by every natural-gradient step (this class's Gaussian one and
        `vitorch.models.gp.cvi.cvi_step` for any likelihood).
        """
        # natural parameters transform linearly under u = L v, so the step is taken in whitened coordinates
        loc, tril = self._whitened_q(l_mm)
        lam_old = torch.cholesky_inverse(tril)
        lam = (1 - lr) * lam_old + lr * lam_target
        eta = (1 - lr) * (lam_old @ loc) + lr * eta_target
        l_lam = jittered_cholesky(lam, "q precision", jitter=0.0)
        new_loc = torch.cholesky_solve(eta.unsqueeze(-1), l_lam).squeeze(-1)
        new_tril = jittered_cholesky(torch.cholesky_inverse(l_lam), "q covariance", jitter=0.0)
        if not self.whiten:
            new_loc, new_tril = l_mm @ new_loc, l_mm @ new_tril
        self._set_q_params(new_loc, new_tril)


def _summed_over_ranks(a_at: Tensor, a_r: Tensor, count: int) -> tuple[Tensor, Tensor, float]:
    """``(sum A A^T [M, M], sum A r [M], total batch size)`` over every process of an initialized
    group (one ``all_reduce`` of the packed statistics); the inputs themselves in one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return a_at, a_r, count
    m = a_r.shape[0]
    packed = torch.cat([a_at.reshape(-1), a_r, a_r.new_tensor([count])])
    dist.all_reduce(packed)
    return packed[: m * m].reshape(m, m), packed[m * m : m * m + m], float(packed[-1])
