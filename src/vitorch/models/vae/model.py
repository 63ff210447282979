"""The variational autoencoder: an encoder family, a decoder likelihood and any objective x estimator.

``VAE.forward(x)`` is one call of `vitorch.loss` with the log-joint
``log p(z) + log p(x | z)`` of a standard-normal prior and the decoder's
likelihood, so the model trains with any bound (ELBO, IWAE, MIWAE, CIWAE,
PIWAE, VIS, Rényi, ...) and any estimator (reparam, STL, DReG, score, VIMCO)
without code of its own.  Three options change the bound:

* ``kl_weight = beta`` (β-VAE, Higgins et al., 2017): ``E log p(x|z) - beta KL``.
  Done inside the log-joint, ``log p(x|z) + beta log p(z) + (1 - beta) log q(z)``,
  so that ``log w = log p(x|z) + beta (log p(z) - log q(z))``; ELBO only.
* ``analytic_kl=True``: ``log w = log p(x|z) - beta KL(q(z|x) || p(z))`` with the
  closed-form KL of a Gaussian encoder (Kingma & Welling, 2014, eq. 10).  The
  log-joint adds back ``log q(z)`` so that vitorch's ``- log q`` cancels; with the
  ``reparam`` estimator the two cancel in value and gradient.
* ``mmd_weight = lambda`` (InfoVAE, Zhao et al., 2019): adds
  ``lambda * MMD(z ~ q(z), z ~ p(z))`` between the batch's particles (the aggregate
  posterior) and as many prior draws to the loss; the reported bound is unchanged.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014).
    Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016).
    Higgins et al., beta-VAE (ICLR 2017).
    Zhao, Song & Ermon, InfoVAE (AAAI 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from ... import estimators as E
from ... import objectives as O
from ..._autocast import full_precision
from ...families import DiagNormal
from ...loss import LossOutput, check, loss
from ...mmd import mmd
from .encoders import DirichletEncoder, GaussianEncoder, IAFEncoder, SymmetricDirichletPrior
from .likelihoods import Bernoulli, Likelihood
from .networks import (
    ConvDecoder,
    ConvFeatures,
    MLPDecoder,
    Tanh,
)

__all__ = ["VAE"]

_LOG_2PI = math.log(2 * math.pi)


class VAE(nn.Module):
    """A VAE whose ``forward(x)`` returns `vitorch.loss`'s output.

    Args:
        encoder: ``x [B, *event] -> family`` with batch ``[B]``, event ``[D]``.
        decoder: ``z [*S, D] -> params [*S, *event(, P)]``.
        likelihood: a `vitorch.models.vae.Likelihood` (default Bernoulli).
        latent_dim: ``D``.
        objective: a `vitorch.objectives` bound (default ELBO).
        estimator: a `vitorch.estimators` estimator (default reparam).
        num_particles: ``K`` particles per datum in training.
        kl_weight: ``beta`` of the β-VAE (ELBO only).
        analytic_kl: use the closed-form KL (ELBO, reparam, Gaussian encoder).
        mmd_weight: ``lambda`` of InfoVAE's MMD term (0 disables it).
        mmd_kernel: the MMD kernel, ``"imq"`` or ``"rbf"``.
        mmd_scale: the MMD kernel's bandwidth.
        prior: ``p(z)``; ``None`` is the standard normal (computed inline, the fast
            path), else anything with ``log_prob(z [*S, D]) -> [*S]`` and
            ``sample(shape)`` (a torch distribution, or a module such as
            `vitorch.models.vae.SymmetricDirichletPrior` whose buffers follow ``.to``).

    Shapes: ``x [B, *event]`` -> ``out.loss`` scalar, ``out.bound [B]``,
    ``out.log_w [K, B]``, ``out.z [K, B, D]``.  A ``(x, y)`` batch reads ``x``.

    Raises:
        ValueError: at construction, listing every reason the options cannot work
            together (a β or analytic KL with a multi-sample bound, for instance).

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014); Burda, Grosse &
        Salakhutdinov, *Importance Weighted Autoencoders* (2016); Higgins et al.,
        *beta-VAE* (2017); Zhao, Song & Ermon, *InfoVAE* (2019).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood | None = None,
        latent_dim: int | None = None,
        objective: O.Objective = O.elbo,
        estimator: E.Estimator = E.reparam,
        num_particles: int = 1,
        kl_weight: float = 1.0,
        analytic_kl: bool = False,
        mmd_weight: float = 0.0,
        mmd_kernel: str = "imq",
        mmd_scale: float = 1.0,
        prior: nn.Module | Distribution | None = None,
    ):
        super().__init__()
        latent_dim = latent_dim if latent_dim is not None else getattr(encoder, "latent_dim", None)
        reasons = []
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            reasons.append(f"latent_dim must be an integer >= 1 (or an encoder with .latent_dim); got {latent_dim!r}")
        if not 0.0 <= kl_weight < math.inf:
            reasons.append(f"kl_weight (beta) must be finite and >= 0; got {kl_weight!r}")
        if not 0.0 <= mmd_weight < math.inf:
            reasons.append(f"mmd_weight must be finite and >= 0; got {mmd_weight!r}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            reasons.append(f"num_particles (K) must be an integer >= 1; got {num_particles!r}")
        elif isinstance(objective, O.Objective):
            reasons += objective.reasons(num_particles)  # e.g. MIWAE's M must divide K
        if mmd_kernel not in ("imq", "rbf"):
            reasons.append(f"mmd_kernel must be 'imq' or 'rbf'; got {mmd_kernel!r}")
        if (kl_weight != 1.0 or analytic_kl) and objective is not O.elbo:
            reasons.append(
                f"kl_weight != 1 and analytic_kl weight the KL of the ELBO; objective {objective!r} "
                "has no such term (use objectives.elbo)"
            )
        if analytic_kl and estimator is not E.reparam:
            reasons.append(f"analytic_kl needs the reparam estimator (its log q terms cancel); got {estimator!r}")
        if prior is not None and not (callable(getattr(prior, "log_prob", None)) and hasattr(prior, "sample")):
            reasons.append(f"prior must have log_prob and sample (a distribution); got {type(prior).__name__}")
        if reasons:
            raise ValueError("invalid VAE set-up:\n  - " + "\n  - ".join(reasons))
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood if likelihood is not None else Bernoulli()
        self.latent_dim = latent_dim
        self.objective = objective
        self.estimator = estimator
        self.num_particles = num_particles
        self.kl_weight = float(kl_weight)
        self.analytic_kl = analytic_kl
        self.mmd_weight = float(mmd_weight)
        self.mmd_kernel = mmd_kernel
        self.mmd_scale = mmd_scale
        self.custom_prior = prior  # an nn.Module prior registers as a submodule here

    # ----------------------------------------------------------------- builders
    @classmethod
    def mlp(
        cls,
        data_dim: int,
        latent_dim: int = 50,
        hidden: Sequence[int] = (200, 200),
        likelihood: Likelihood | None = None,
        posterior: str = "diag",
        activation: type[nn.Module] = Tanh,
        num_flows: int = 2,
        **options,
    ) -> VAE:
        """The MLP VAE of Burda et al. (default 784-200-200-50 with tanh units for ``data_dim=784``).

        The tanh units are `vitorch.models.vae.Tanh` (`vitorch.kernels.tanh`);
        pass ``activation=nn.Tanh`` for torch's own.

        ``posterior`` is ``"diag"`` (a diagonal Gaussian), ``"iaf"`` (a Gaussian plus
        ``num_flows`` IAF steps) or ``"dirichlet"`` (an RSVI Dirichlet on the simplex,
        with a symmetric Dirichlet(1) prior unless ``prior`` is given).  ``options`` go
        to `VAE`.
        """
        likelihood = likelihood if likelihood is not None else Bernoulli()
        decoder = MLPDecoder(latent_dim, (data_dim,), tuple(reversed(hidden)), likelihood.params_per_entry, activation)
        if posterior == "diag":
            encoder = GaussianEncoder(None, data_dim, latent_dim, hidden, activation)
        else:
            trunk = nn.Sequential(*list(_trunk(data_dim, hidden, activation)))
            encoder = _other_encoder(posterior, trunk, hidden[-1] if hidden else data_dim, latent_dim, num_flows)
        return cls(encoder, decoder, likelihood, latent_dim, **_with_prior(posterior, latent_dim, options))

    @classmethod
    def conv(
        cls,
        image_shape: Sequence[int],
        latent_dim: int = 32,
        features: int = 256,
        likelihood: Likelihood | None = None,
        posterior: str = "diag",
        flat_data: bool = True,
        num_flows: int = 2,
        **options,
    ) -> VAE:
        """A small convolutional VAE for ``(C, H, W)`` images (``H, W`` multiples of 4).

        ``flat_data`` says the data arrive flattened (``[B, C*H*W]``, as
        `vitorch.data.ImageData` gives them by default).
        """
        likelihood = likelihood if likelihood is not None else Bernoulli()
        event = (math.prod(image_shape),) if flat_data else tuple(image_shape)
        decoder = ConvDecoder(latent_dim, image_shape, likelihood.params_per_entry, event)
        trunk = ConvFeatures(image_shape, features)
        if posterior == "diag":
            encoder = GaussianEncoder(trunk, features, latent_dim)
        else:
            encoder = _other_encoder(posterior, trunk, features, latent_dim, num_flows)
        return cls(encoder, decoder, likelihood, latent_dim, **_with_prior(posterior, latent_dim, options))

    # ----------------------------------------------------------------- the model
    def log_prior(self, z: Tensor) -> Tensor:
        """``log p(z)``: ``[*S, D] -> [*S]`` (inline for the standard normal)."""
        if self.custom_prior is not None:
            return self.custom_prior.log_prob(z)
        return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * _LOG_2PI)

    def sample_prior(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``z ~ p(z)`` of shape ``[*shape, D]`` on ``like``'s dtype and device."""
        if self.custom_prior is not None:
            return self.custom_prior.sample(torch.Size(shape)).to(like)
        return torch.randn(*shape, self.latent_dim, dtype=like.dtype, device=like.device)

    def prior(self, like: Tensor | None = None):
        """The prior as a distribution (the standard normal as a `vitorch.DiagNormal`, event ``[D]``)."""
        if self.custom_prior is not None:
            return self.custom_prior
        zeros = torch.zeros(self.latent_dim, dtype=None if like is None else like.dtype)
        if like is not None:
            zeros = zeros.to(like.device)
        return DiagNormal(zeros, torch.ones_like(zeros), validate_args=False)

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """``log p(x | z)``: ``z [*S, B, D]``, ``x [B, *event]`` -> ``[*S, B]``.

        The zoo's `vitorch.models.vae.MLPDecoder` (exactly that class) with the
        zoo's `vitorch.models.vae.Bernoulli` likelihood (exactly that class) is
        scored by `MLPDecoder.bernoulli_log_prob
        <vitorch.models.vae.MLPDecoder.bernoulli_log_prob>`: one call of
        `vitorch.kernels.bernoulli_linear_log_prob` on the output layer's weight and
        bias (equal to the general form to rounding; the output layer's forward hooks do
        not run).  Every other pair runs ``likelihood.log_prob(decoder(z), x)``.
        """
        if type(self.likelihood) is Bernoulli and type(self.decoder) is MLPDecoder:
            return self.decoder.bernoulli_log_prob(z, x)
        return self.likelihood.log_prob(full_precision(self.decoder(z)), x)  # autocast: density in float32

    def log_joint(self, x: Tensor, q=None):
        """``z [*S, B, D] -> log p(x, z) [*S, B]`` for data ``x [B, *event]`` (what `vitorch.loss` reads).

        With ``kl_weight != 1`` or ``analytic_kl`` the function reweights the KL as
        described in the module notes and needs the guide ``q``.
        """
        log_lik = self.log_likelihood
        if self.analytic_kl:
            kl = self.kl_weight * kl_divergence(q, self.prior(x))

            def fn(z):
                return log_lik(z, x) + q.log_prob(z) - kl

        elif self.kl_weight != 1.0:
            beta = self.kl_weight

            def fn(z):
                return log_lik(z, x) + beta * self.log_prior(z) + (1.0 - beta) * q.log_prob(z)

        else:

            def fn(z):
                return self.log_prior(z) + log_lik(z, x)

        return fn

    def forward(self, x: Tensor | Sequence[Tensor]) -> LossOutput:
        """The training loss on a batch ``x [B, *event]`` (or an ``(x, y)`` batch, which reads ``x``).

        Returns:
            `vitorch.LossOutput`: ``bound [B]`` the per-datum bound of the
            objective (``ELBO``, ``IWAE_K``, ...; detached), ``loss = -mean(bound)``
            with the estimator's gradient (plus ``lambda * MMD`` with InfoVAE's term),
            ``log_w [K, B]`` and ``z [K, B, D]``.  The VAE has no global latents, so
            the per-datum bound is the whole bound of each datum.
        """
        if isinstance(x, (tuple, list)):
            x = x[0]
        q = self.encoder(x)
        out = loss(self.log_joint(x, q), q, self.num_particles, self.objective, self.estimator)
        if self.mmd_weight:
            z = out.z.reshape(-1, out.z.shape[-1])
            penalty = mmd(z, self.sample_prior(z.shape[:1], z), kernel=self.mmd_kernel, scale=self.mmd_scale)
            out.loss = out.loss + self.mmd_weight * penalty
        return out

    def check(self, x: Tensor) -> None:
        """Raise ``ValueError`` if the encoder's family cannot run the objective and estimator (call at set-up)."""
        with torch.no_grad():
            check(self.encoder(x), self.num_particles, self.objective, self.estimator)

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> Tensor:
        """``n`` draws ``z ~ p(z)`` decoded: the likelihood's mean (``mean=True``) or a sample, ``[n, *event]``."""
        z = self.sample_prior((n,), next(self.parameters()))
        params = self.decoder(z)
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode one draw of ``q(z | x)``: the likelihood's mean ``[B, *event]``."""
        z = self.encoder(x).sample()
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def predict(self, x: Tensor | Sequence[Tensor], num_particles: int = 1) -> Tensor:
        """The reconstruction ``E_q(z|x) E[x | z]`` of a batch: ``[B, *event]``.

        The decoder's likelihood mean (Bernoulli: the pixel probabilities ``sigmoid(l)``;
        Gaussian: the mean; ...) averaged over ``num_particles`` draws ``z ~ q(z | x)``, an
        unbiased estimate of the mean of the reconstruction distribution
        ``int p(x' | z) q(z | x) dz``.  Like `forward`, an ``(x, y)`` batch reads ``x``.

        Args:
            x: ``[B, *event]`` data, or a tuple whose first entry it is.
            num_particles: draws ``K >= 1`` averaged.

        Returns:
            ``[B, *event]`` the expected reconstruction (no gradient).

        Raises:
            ValueError: if ``num_particles`` is not an integer ``>= 1``.

        References:
            Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), section 2.
        """
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1; got {num_particles!r}")
        if isinstance(x, (tuple, list)):
            x = x[0]
        z = self.encoder(x).sample((num_particles,))  # [K, B, D]
        return self.likelihood.mean(self.decoder(z)).mean(0)


def _other_encoder(posterior: str, trunk: nn.Module, width: int, latent_dim: int, num_flows: int) -> nn.Module:
    if posterior == "iaf":
        return IAFEncoder(trunk, width, latent_dim, num_flows)
    if posterior == "dirichlet":
        return DirichletEncoder(trunk, width, latent_dim)
    raise ValueError(f"posterior must be 'diag', 'iaf' or 'dirichlet'; got {posterior!r}")


def _with_prior(posterior: str, latent_dim: int, options: dict) -> dict:
    if posterior == "dirichlet" and options.get("prior") is None:
        return {**options, "prior": SymmetricDirichletPrior(latent_dim)}
    return options


def _trunk(data_dim: int, hidden: Sequence[int], activation: type[nn.Module]):
    width = data_dim
    for h in hidden:
        yield nn.Linear(width, h)
        yield activation()
        width = h
