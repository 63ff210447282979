"""ARD-VAE: a hierarchical prior on the latent variances that finds the relevant latent dimensions.

Saha, Joshi & Whitaker (2025) replace the VAE's fixed ``N(0, I)`` prior by automatic
relevance determination: each latent axis ``d`` has its own precision,

    z_d | alpha_d ~ N(0, 1 / alpha_d),        alpha_d ~ Gamma(a_0, b_0),

and the precisions are inferred from the *encoded data* ``D_z = {z_n}``: the conjugate
update gives ``alpha_d | D_z ~ Gamma(a_0 + N/2, b_0 + sum_n z_nd^2 / 2)`` and, integrating
``alpha`` out, the prior each datum is scored against is a product of Student-t laws,

    p(z | D_z) = prod_d t_{2 a_d}(z_d; 0, sqrt(b_d / a_d)),   a_d = a_0 + N/2,  b_d = b_0 + sum_n z_nd^2 / 2.

The rest of the ELBO is unchanged.  An axis the decoder does not use is pulled to the
prior; its encodings shrink, the next estimate of its variance shrinks with them, and it
collapses to ``b_0 / a_d``, while a used axis keeps the spread of its codes.  The
*relevance* of axis ``d`` is the prior's variance ``E[1 / alpha_d | D_z] = b_d / (a_d - 1)``;
`ARDVAE.relevant_dims` counts the axes whose relevance is at least ``threshold`` times the
largest one.

Choices made here (the paper's formulation leaves them open or sets them otherwise):
``D_z`` is the current training batch's encoder means (detached: an empirical-Bayes
plug-in refreshed every step, where the paper encodes a separate subset of the training
set), and ``a_0 = b_0 = 1e-3`` by default.  `ARDVAE.refit_prior` re-estimates the prior
from any data set (call it on a large one before scoring or sampling).

References:
    Saha, Joshi & Whitaker, *ARD-VAE: A Statistical Formulation to Find the Relevant Latent
    Dimensions of Variational Autoencoders* (WACV 2025, arXiv:2501.10901); MacKay (1994)
    and Tipping (2001) for automatic relevance determination.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import StudentT

from ...loss import LossOutput, loss
from .model import VAE

__all__ = ["ARDPrior", "ARDVAE"]


class ARDPrior(nn.Module):
    """``p(z | D_z)``: independent Student-t axes from a Normal-Gamma ARD hierarchy (module notes).

    Args:
        latent_dim: ``D``.
        a0: the Gamma hyperprior's shape ``a_0 > 0``.
        b0: its rate ``b_0 > 0``.

    ``log_prob(z [*S, D]) -> [*S]`` and ``sample(shape) -> [*shape, D]`` read the buffers
    ``concentration`` (``a [D]``) and ``rate`` (``b [D]``) set by `update`; before any update
    they hold ``a = a_0 + 1/2, b = b_0 + 1/2`` (one unit-variance pseudo-observation).

    References:
        Saha, Joshi & Whitaker (2025); Tipping, *Sparse Bayesian Learning and the Relevance
        Vector Machine* (JMLR 2001).
    """

    def __init__(self, latent_dim: int, a0: float = 1e-3, b0: float = 1e-3):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"ARDPrior: latent_dim must be an integer >= 1; got {latent_dim!r}")
        if not (0 < a0 < math.inf and 0 < b0 < math.inf):
            raise ValueError(f"ARDPrior: a0 and b0 must be positive and finite; got {a0!r}, {b0!r}")
        self.a0, self.b0 = float(a0), float(b0)
        self.register_buffer("concentration", torch.full((latent_dim,), self.a0 + 0.5))
        self.register_buffer("rate", torch.full((latent_dim,), self.b0 + 0.5))
        self.register_buffer("num_codes", torch.ones((), dtype=torch.long))

    @torch.no_grad()
    def update(self, codes: Tensor, num_codes: int | None = None) -> None:
        """Condition on encoded data ``codes [N, D]`` (the conjugate Gamma update of each precision).

        ``num_codes`` (default ``N``) is how many observations the update counts, the mean
        square of the codes standing for their average: `ARDVAE.refit_prior` averages over
        a large set but keeps the training batch's count, so that the prior keeps the form
        the encoder was trained against (a pruned axis's variance scales as ``1 / N``).
        """
        if codes.dim() != 2 or codes.shape[-1] != self.rate.shape[0] or codes.shape[0] < 1:
            raise ValueError(f"ARDPrior.update: codes must be [N, {self.rate.shape[0]}]; got {tuple(codes.shape)}")
        num = codes.shape[0] if num_codes is None else num_codes
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"ARDPrior.update: num_codes must be an integer >= 1; got {num_codes!r}")
        codes = codes.to(self.rate.dtype)
        self.concentration.fill_(self.a0 + 0.5 * num)
        self.rate.copy_(self.b0 + 0.5 * num * codes.pow(2).mean(0))
        self.num_codes.fill_(num)

    @property
    def relevance(self) -> Tensor:
        """``[D]`` each axis's prior variance ``E[1/alpha_d | D_z] = b_d / (a_d - 1)`` (``b_d / a_d`` for a <= 1)."""
        a = self.concentration
        return torch.where(a > 1, self.rate / (a - 1).clamp_min(1e-12), self.rate / a)

    def _law(self, like: Tensor) -> StudentT:
        a, b = self.concentration.to(like), self.rate.to(like)
        return StudentT(2 * a, torch.zeros_like(a), (b / a).sqrt(), validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z | D_z)``: ``[*S, D] -> [*S]``."""
        return self._law(z).log_prob(z).sum(-1)

    def sample(self, sample_shape=()) -> Tensor:
        """``[*sample_shape, D]`` draws of the prior."""
        return self._law(self.rate).sample(torch.Size(sample_shape))


class ARDVAE(VAE):
    """A `vitorch.models.vae.VAE` whose prior is the ARD hierarchy `ARDPrior` (module notes).

    Args:
        encoder, decoder, likelihood, latent_dim: as for `VAE` (the encoder's family must
            have a ``mean``: a `vitorch.DiagNormal`, ...).
        a0, b0: the Gamma hyperprior on each axis's precision.
        options: the rest of `VAE`'s options (objective, estimator, K, ...).

    Shapes: as `VAE`: ``x [B, *event]`` -> ``out.loss`` scalar, ``out.bound [B]``,
    ``out.log_w [K, B]``, ``out.z [K, B, D]``.  A training-mode forward first conditions
    the prior on the batch's encoder means.

    References:
        Saha, Joshi & Whitaker, *ARD-VAE* (WACV 2025).
    """

    def __init__(
        self, encoder, decoder, likelihood=None, latent_dim=None, a0: float = 1e-3, b0: float = 1e-3, **options
    ):
        if options.get("prior") is not None or options.get("mmd_weight"):
            raise ValueError(
                "ARDVAE builds its own prior (ARDPrior) and has no MMD term; pass neither prior nor mmd_weight"
            )
        latent_dim = latent_dim if latent_dim is not None else getattr(encoder, "latent_dim", None)
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"ARDVAE: latent_dim must be an integer >= 1; got {latent_dim!r}")
        super().__init__(encoder, decoder, likelihood, latent_dim, prior=ARDPrior(latent_dim, a0, b0), **options)

    @property
    def relevance(self) -> Tensor:
        """``[D]`` each axis's prior variance under the current ``D_z`` (see `ARDPrior.relevance`)."""
        return self.custom_prior.relevance

    def relevant_dims(self, threshold: float = 0.01) -> Tensor:
        """``[D]`` bool: axes whose relevance is at least ``threshold`` times the largest one."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1); got {threshold!r}")
        rel = self.relevance
        return rel >= threshold * rel.max()

    @torch.no_grad()
    def refit_prior(self, x: Tensor, batch_size: int = 1024) -> None:
        """Condition the prior on the encoder means of a data set ``x [N, *event]`` (the paper's ``X_alpha``).

        The codes' mean square comes from all of ``x``; the update counts as many codes as
        the last training batch had (see `ARDPrior.update`).
        """
        codes = torch.cat([self.encoder(xb).mean for xb in x.split(batch_size)])
        self.custom_prior.update(codes, int(self.custom_prior.num_codes))

    def forward(self, x) -> LossOutput:
        """The ELBO (or the chosen bound) under the ARD prior on a batch ``x [B, *event]``."""
        if isinstance(x, (tuple, list)):
            x = x[0]
        q = self.encoder(x)
        if self.training:
            self.custom_prior.update(q.mean.detach())
        return loss(self.log_joint(x, q), q, self.num_particles, self.objective, self.estimator)
