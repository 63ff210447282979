"""Neural posterior estimation: a conditional flow ``q(theta | x)`` fitted to simulations.

NPE trains a conditional density estimator by maximum likelihood on pairs
``(theta_i, x_i) ~ p(theta) p(x | theta)``:

    L(phi) = -(1/N) sum_i log q_phi(theta_i | x_i),

whose population minimizer is the posterior ``p(theta | x)`` for every ``x`` at once
(amortization).  `NPE` is an ``nn.Module`` whose forward returns a `vitorch.LossOutput`
with ``bound = log q(theta_i | x_i)``, so it trains with `vitorch.fit` (held-out
split, early stopping and best-weights restore included) through `NPE.fit`.

Around the flow:

* the parameters are mapped to the prior's support: the flow models
  ``u = T^{-1}(theta)`` with ``T = bijection_for(prior.support)`` (e.g. a scaled
  sigmoid onto a box), so ``q`` puts no mass outside the support and needs no
  leakage correction;
* ``u`` and ``x`` are z-scored with statistics from the first training set;
* ``x`` may pass through an embedding network trained with the flow
  (`vitorch.sbi.MLPEmbedding`, `vitorch.sbi.DeepSetEmbedding`);
* optionally the Fisher-information penalty of Gloeckler et al. (2023) regularizes
  the sensitivity of ``q`` to ``x`` (adversarial robustness);
* later rounds of sequential NPE use the atomic APT loss (`atomic_log_prob`).

References:
    Papamakarios & Murray, *Fast epsilon-free inference of simulation models with Bayesian
    conditional density estimation* (NeurIPS 2016).
    Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
    likelihood-free inference* (ICML 2019).
    Gloeckler, Deistler & Macke, *Adversarial robustness of amortized Bayesian inference* (ICML 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .._output import LossOutput
from ..families.flow import ConditionalFlow, Flow
from ..families.gaussian import DiagNormal
from ..model.bijections import bijection_for
from .embedding import Standardize
from .flows import build_flow
from .posterior import NPEPosterior
from .simulate import check_prior
from .training import train_npe

__all__ = ["NPE", "atomic_log_prob", "contrastive_indices"]


def atomic_log_prob(log_q: Tensor, log_prior: Tensor) -> Tensor:
    """APT's atomic proposal-posterior log-density of the true parameter.

    With atoms ``theta_{i,0} = theta_i`` (the parameter that generated ``x_i``) and
    ``theta_{i,1..A-1}`` drawn from the other rows of the batch, the proposal posterior
    over the atoms is ``q~(theta_{i,a} | x_i) = r_{i,a} / sum_b r_{i,b}`` with
    ``r = q(theta | x_i) / p(theta)``, and the loss is ``-log q~(theta_{i,0} | x_i)``.

    Args:
        log_q: ``[A, B]`` ``log q(theta_{i,a} | x_i)`` (atom ``a = 0`` the true one).
        log_prior: ``[A, B]`` ``log p(theta_{i,a})``.

    Returns:
        ``[B]`` ``log q~(theta_{i,0} | x_i)`` (at most 0).

    References:
        Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
        likelihood-free inference* (ICML 2019), sec. 3.2 and eq. 4.
    """
    if log_q.shape != log_prior.shape or log_q.dim() != 2 or log_q.shape[0] < 2:
        raise ValueError(
            f"atomic_log_prob: log_q and log_prior must both be [A, B] with A >= 2; got {tuple(log_q.shape)} "
            f"and {tuple(log_prior.shape)}"
        )
    logits = log_q - log_prior
    return logits[0] - torch.logsumexp(logits, 0)


def contrastive_indices(batch: int, num_atoms: int, generator: torch.Generator | None = None) -> Tensor:
    """``[B, A - 1]`` rows of the batch to use as contrastive atoms, none equal to its own row.

    Each row draws ``A - 1`` distinct other rows uniformly without replacement.

    References:
        Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
        likelihood-free inference* (ICML 2019), sec. 3.2.
    """
    if not 2 <= num_atoms <= batch:
        raise ValueError(f"contrastive_indices: need 2 <= num_atoms <= batch; got num_atoms={num_atoms}, batch={batch}")
    weights = 1.0 - torch.eye(batch)
    return torch.multinomial(weights, num_atoms - 1, replacement=False, generator=generator)


class NPE(nn.Module):
    """Amortized posterior ``q(theta | x)``: a conditional flow on the prior's support.

    Args:
        prior: torch distribution with event shape ``[D]`` and no batch shape
            (e.g. `vitorch.sbi.box_uniform`, ``MultivariateNormal``).
        x_shape: the shape of one simulation ``x``.
        flow: ``"maf"`` (masked autoregressive, affine), ``"nsf"`` (masked
            autoregressive rational-quadratic splines), or a factory
            ``(dim, context_features) -> ConditionalFlow``.
        transforms: number of autoregressive transforms.
        hidden: hidden widths of each transform's MADE.
        activation: hidden activation constructor (default ``nn.Tanh``, sbi's MAF default).
        bins: spline bins for ``"nsf"``.
        embedding: a module ``x [B, *x_shape] -> [B, C]`` trained with the flow (default:
            the flattened, z-scored ``x``).
        z_score_theta: z-score the unconstrained parameters with training statistics.
        z_score_x: z-score ``x`` (before the embedding) with training statistics, per
            coordinate, or per feature (last dimension) pooled over the set when the
            embedding declares ``permutation_invariant = True`` (`DeepSetEmbedding` does).

    Shapes: ``log_prob(theta [*, B, D], x [B, *x_shape]) -> [*, B]``;
    ``posterior(x [*batch, *x_shape])`` is a distribution with batch shape ``[*batch]``.

    Example:
        >>> prior = box_uniform([-2.0, -2.0], [2.0, 2.0])
        >>> theta, x = simulate(prior, lambda t: t + 0.1 * torch.randn_like(t), 2000)
        >>> npe = NPE(prior, x_shape=(2,))
        >>> npe.fit(theta, x, max_epochs=50)
        >>> samples = npe.posterior(torch.tensor([0.5, 0.5])).sample((1000,))   # [1000, 2]

    References:
        Papamakarios & Murray, *Fast epsilon-free inference of simulation models with
        Bayesian conditional density estimation* (NeurIPS 2016);
        Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
        likelihood-free inference* (ICML 2019).
    """

    def __init__(
        self,
        prior: Distribution,
        x_shape: Sequence[int],
        *,
        flow: str | Callable[[int, int], ConditionalFlow] = "maf",
        transforms: int = 5,
        hidden: Sequence[int] = (50, 50, 50),
        activation: Callable[[], nn.Module] = nn.Tanh,
        bins: int = 10,
        embedding: nn.Module | None = None,
        z_score_theta: bool = True,
        z_score_x: bool = True,
    ):
        super().__init__()
        self.dim = check_prior(prior)
        self.prior = prior
        if isinstance(x_shape, int) or not all(isinstance(s, int) and s >= 1 for s in x_shape):
            raise ValueError(f"NPE: x_shape must be a sequence of positive integers; got {x_shape!r}")
        self.x_shape = torch.Size(x_shape)
        if embedding is not None and not isinstance(embedding, nn.Module):
            raise TypeError(f"NPE: embedding must be an nn.Module; got {type(embedding).__name__}")
        self.embedding = embedding
        self.bijection = bijection_for(prior.support, torch.Size([self.dim]))
        self.theta_norm = Standardize((self.dim,))
        # A set embedding needs statistics shared across the set to stay invariant.
        self.x_norm = Standardize(self.x_shape, pool=getattr(embedding, "permutation_invariant", False))
        self.z_score_theta, self.z_score_x = bool(z_score_theta), bool(z_score_x)
        self.register_buffer("standardized", torch.tensor(False))
        with torch.no_grad():
            probe = self._embed(torch.zeros(1, *self.x_shape))
        if probe.dim() != 2 or probe.shape[0] != 1:
            raise ValueError(f"NPE: the embedding must map [B, *x_shape] to [B, C]; got {tuple(probe.shape)} for B=1")
        self.context_features = probe.shape[1]
        self.flow = build_flow(flow, self.dim, self.context_features, transforms, hidden, activation, bins)
        # Training configuration, set by fit() (not part of the saved state).
        self.loss_kind, self.num_atoms, self.fisher_penalty = "mle", 10, 0.0

    # --- the density ----------------------------------------------------------------
    def _embed(self, x_std: Tensor) -> Tensor:
        if self.embedding is not None:
            return self.embedding(x_std)
        n = len(self.x_shape)
        return x_std.flatten(x_std.dim() - n)

    def _standardize_x(self, x: Tensor) -> Tensor:
        n = len(self.x_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != tuple(self.x_shape):
            raise ValueError(
                f"NPE: x must have shape [*batch, {', '.join(map(str, self.x_shape))}]; got {tuple(x.shape)}"
            )
        return self.x_norm(x) if self.z_score_x else x

    def context(self, x: Tensor) -> Tensor:
        """The flow's context ``[*batch, C]`` for ``x [*batch, *x_shape]``."""
        return self._embed(self._standardize_x(x))

    def flow_given(self, context: Tensor) -> Flow:
        """The flow over the standardized unconstrained parameters for ``context [*batch, C]``."""
        base = DiagNormal(self.flow.base_loc, self.flow.base_scale, validate_args=False)
        return Flow(base, list(self.flow.transforms), context, validate_args=False)

    def _theta_scale(self) -> Tensor:
        return self.theta_norm.std.log().sum() if self.z_score_theta else self.theta_norm.std.new_zeros(())

    def log_prob_given(self, theta: Tensor, context: Tensor) -> Tensor:
        """``log q(theta | x)`` for ``theta [*, *batch, D]`` and the context ``[*batch, C]`` of ``x``."""
        u = self.bijection.inverse(theta)
        _, ladj = self.bijection.forward_and_ladj(u)
        v = self.theta_norm(u) if self.z_score_theta else u
        return self.flow_given(context).log_prob(v) - self._theta_scale() - ladj

    def sample_and_log_prob_given(self, context: Tensor, sample_shape=()) -> tuple[Tensor, Tensor]:
        """``theta [*sample, *batch, D]`` drawn (reparameterized) from ``q(. | x)`` and its log-density."""
        v, log_q = self.flow_given(context).rsample_and_log_prob(torch.Size(sample_shape))
        u = self.theta_norm.inverse(v) if self.z_score_theta else v
        theta, ladj = self.bijection.forward_and_ladj(u)
        return theta, log_q - self._theta_scale() - ladj

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q(theta | x)``: ``theta [*, *batch, D]``, ``x [*batch, *x_shape]`` -> ``[*, *batch]``."""
        return self.log_prob_given(theta, self.context(x))

    def posterior(self, x: Tensor):
        """The amortized posterior at ``x [*batch, *x_shape]``, a torch distribution
        (`vitorch.sbi.NPEPosterior`) with batch shape ``[*batch]`` and event shape ``[D]``."""

        return NPEPosterior(self, x)

    # --- the training objective ---------------------------------------------------------
    def forward(self, batch) -> LossOutput:
        """``(theta [B, D], x [B, *x_shape])`` -> `vitorch.LossOutput` with ``bound [B]``:
        ``log q(theta_i | x_i)`` (maximum likelihood) or APT's atomic proposal-posterior
        log-density (``loss_kind == "atomic"``); ``loss = -mean(bound)`` plus, in training
        with ``fisher_penalty = beta > 0``, ``beta`` times the mean squared norm of
        ``d log q(theta_i | x_i) / d x_i`` (in z-scored ``x``)."""
        theta, x = batch
        x_std = self._standardize_x(x)
        penalize = self.training and self.fisher_penalty > 0 and torch.is_grad_enabled()
        if penalize:
            x_std = x_std.detach().requires_grad_(True)
        context = self._embed(x_std)
        if self.loss_kind == "atomic":
            bound, log_q_true = self._atomic(theta, context)
        else:
            bound = log_q_true = self.log_prob_given(theta, context)
        loss = -bound.mean()
        if penalize:
            loss = loss + self.fisher_penalty * self._fisher_trace(log_q_true, x_std).mean()
        return LossOutput(loss, bound)

    def _atomic(self, theta: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        batch = theta.shape[0]
        atoms = min(self.num_atoms, batch)
        if atoms < 2:
            raise ValueError(f"NPE: the atomic loss needs batches of at least 2 pairs; got a batch of {batch}")
        idx = contrastive_indices(batch, atoms).to(theta.device)
        thetas = torch.cat([theta.unsqueeze(0), theta[idx].transpose(0, 1)], 0)  # [A, B, D]
        log_q = self.log_prob_given(thetas, context)
        return atomic_log_prob(log_q, self.prior.log_prob(thetas)), log_q[0]

    @staticmethod
    def _fisher_trace(log_q: Tensor, x_std: Tensor) -> Tensor:
        """``|| d log q(theta_i | x_i) / d x_i ||^2`` per row ``[B]``, with a graph for the penalty.

        Gloeckler et al. (2023) penalize ``E_x tr I(x)`` with
        ``I(x) = E_{q(theta | x)}[s s^T]``, ``s = grad_x log q(theta | x)``.  Here the inner
        expectation is taken at the training ``theta`` (drawn from ``p(theta | x)``, which
        ``q`` approximates), so the penalty costs one extra backward pass and no sampling."""
        (grad,) = torch.autograd.grad(log_q.sum(), x_std, create_graph=True)
        return grad.pow(2).flatten(1).sum(-1)

    # --- training -------------------------------------------------------------------------
    def fit(self, theta: Tensor, x: Tensor, **kwargs):
        """Fit the flow to simulated pairs; see `vitorch.sbi.train_npe` for the options."""

        return train_npe(self, theta, x, **kwargs)

    @torch.no_grad()
    def set_standardization(self, theta: Tensor, x: Tensor) -> None:
        """Set the z-scoring statistics from training pairs (done by the first `fit` call)."""
        self.theta_norm.fit(self.bijection.inverse(theta))
        self.x_norm.fit(x)
        self.standardized.fill_(True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, x_shape={tuple(self.x_shape)}, context_features={self.context_features}"
