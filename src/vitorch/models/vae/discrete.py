"""A VAE with L categorical latents of C classes each: Gumbel-softmax or exact enumeration.

The latent code is ``L`` independent one-hot vectors of ``C`` classes (``C^L`` codes), read by
the decoder as one flat vector ``z [*S, B, L*C]``; the prior is uniform.  Two ways to train
the encoder:

* ``"gumbel"`` (Jang, Gu & Poole, 2017; Maddison, Mnih & Teh, 2017): the decoder reads a
  Concrete (Gumbel-softmax) sample ``softmax((log pi + G) / tau)`` at temperature ``tau``,
  annealed as ``tau_t = max(tau_min, tau_0 exp(-r t))`` (Jang et al.'s schedule), with the
  categorical's closed-form KL to the uniform prior (as in Jang et al.).  With
  ``straight_through=True`` the decoder reads the hard one-hot ``argmax`` with the
  relaxed sample's gradient (`vitorch.families.concrete.RelaxedOneHotCategoricalStraightThrough`):
  the reported bound is then an unbiased estimate of the discrete model's ELBO; without it
  the bound is that of the relaxed decoder input.
* ``"enumerate"``: the ELBO is summed over all ``C^L`` codes, each weighted by ``q(z | x)``
  (`vitorch.estimators.enumerate`): exact value and exact gradient, no variance, at the
  cost of ``C^L`` decoder passes per datum (keep it small: 2 latents of 10 classes is 100).

Held-out scoring (`vitorch.models.vae.evaluate`) always scores the discrete model: the
encoder returns the categorical product `OneHotLatents`.

References:
    Jang, Gu & Poole, *Categorical Reparameterization with Gumbel-Softmax* (ICLR 2017);
    Maddison, Mnih & Teh, *The Concrete Distribution* (ICLR 2017); Mnih & Gregor (2014)
    and Kingma et al. (2014) on summing a discrete latent over its support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, OneHotCategorical, constraints, kl_divergence

from ... import quadrature
from ...families.concrete import RelaxedOneHotCategorical, RelaxedOneHotCategoricalStraightThrough
from ...loss import LossOutput, loss
from .model import VAE
from .networks import Tanh, mlp

__all__ = ["OneHotLatents", "CategoricalEncoder", "DiscreteVAE"]


class OneHotLatents(Distribution):
    """``L`` independent one-hot categoricals of ``C`` classes, as one flat vector ``z [*batch, L*C]``.

    Args:
        logits: ``[*batch, L, C]`` unnormalized log-probabilities.

    ``base`` is the same law as torch's ``Independent(OneHotCategorical(logits), 1)`` with
    event ``[L, C]`` (what `vitorch.estimators.enumerate` enumerates); this class flattens
    the event to ``[L*C]`` so that decoders, priors and the collapse diagnostics read a
    vector.  ``mean`` is the flattened class probabilities.

    References:
        Jang, Gu & Poole (ICLR 2017), section 3 (a categorical latent code).
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.real_vector  # one-hot blocks; checked by the base law

    def __init__(self, logits: Tensor, validate_args: bool | None = False):
        if not isinstance(logits, Tensor) or logits.dim() < 2:
            raise ValueError(f"OneHotLatents: logits must be [*batch, L, C]; got {getattr(logits, 'shape', logits)}")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.num_latents, self.num_classes = logits.shape[-2:]
        super().__init__(logits.shape[:-2], torch.Size([self.num_latents * self.num_classes]), validate_args=False)

    @property
    def base(self) -> Distribution:
        """``Independent(OneHotCategorical(logits), 1)``: batch ``[*batch]``, event ``[L, C]``."""
        return Independent(OneHotCategorical(logits=self.logits, validate_args=False), 1)

    @property
    def probs(self) -> Tensor:
        return self.logits.exp()

    @property
    def mean(self) -> Tensor:
        return self.probs.flatten(-2)

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return (p * (1 - p)).flatten(-2)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.logits.shape[-2:]
        return OneHotLatents(self.logits.expand(shape))

    def sample(self, sample_shape=()) -> Tensor:
        return self.base.sample(torch.Size(sample_shape)).flatten(-2)

    def log_prob(self, value: Tensor) -> Tensor:
        """``[*sample, *batch]`` log-pmf of flat one-hot codes ``value [*sample, *batch, L*C]``."""
        return self.base.log_prob(value.unflatten(-1, (self.num_latents, self.num_classes)))

    def entropy(self) -> Tensor:
        return self.base.entropy()


@torch.distributions.register_kl(OneHotLatents, OneHotLatents)
def _kl_one_hot_latents(q: OneHotLatents, p: OneHotLatents) -> Tensor:
    return kl_divergence(q.base, p.base)


class CategoricalEncoder(nn.Module):
    """``x [B, F] -> OneHotLatents`` with ``L`` latents of ``C`` classes: an MLP to ``L*C`` logits.

    Args:
        data_dim: ``F``.
        num_latents: ``L``.
        num_classes: ``C``.
        hidden: hidden widths.
        activation: hidden activation class.

    References:
        Jang, Gu & Poole (ICLR 2017), section 4 (the categorical VAE's encoder).
    """

    def __init__(
        self,
        data_dim: int,
        num_latents: int,
        num_classes: int,
        hidden: Sequence[int] = (200, 200),
        activation: type[nn.Module] = Tanh,
    ):
        super().__init__()
        self.net = mlp(data_dim, hidden, num_latents * num_classes, activation)
        self.num_latents, self.num_classes = num_latents, num_classes
        self.latent_dim = num_latents * num_classes

    def forward(self, x: Tensor) -> OneHotLatents:
        logits = self.net(x.reshape(x.shape[0], -1))
        return OneHotLatents(logits.unflatten(-1, (self.num_latents, self.num_classes)))


class DiscreteVAE(VAE):
    """A VAE with categorical latents trained by Gumbel-softmax or exact enumeration (module notes).

    Args:
        encoder: returns `OneHotLatents` (e.g. a `CategoricalEncoder`).
        decoder: ``z [*S, L*C] -> params``.
        likelihood: as for `VAE`.
        method: ``"gumbel"`` or ``"enumerate"``.
        temperature: the initial Concrete temperature ``tau_0``.
        min_temperature: its floor ``tau_min``.
        anneal_rate: ``r`` of ``tau_t = max(tau_min, tau_0 exp(-r t))`` per training step.
        straight_through: decode hard one-hot codes with the relaxed gradient.
        num_particles: Concrete draws per datum (gumbel only).
        max_support: the largest ``C^L`` enumeration accepts.

    Shapes: ``x [B, *event]`` -> ``out.loss`` scalar, ``out.bound [B]``, ``out.log_w [K, B]``
    (``K = C^L`` codes when enumerating) and ``out.z [K, B, L*C]``.

    Raises:
        ValueError: for an unknown method, a bad temperature schedule, an encoder that does
            not say ``num_latents`` and ``num_classes``, or ``C^L > max_support`` when enumerating.

    References:
        Jang, Gu & Poole (ICLR 2017); Maddison, Mnih & Teh (ICLR 2017); Mnih & Gregor (2014).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood=None,
        method: str = "gumbel",
        temperature: float = 1.0,
        min_temperature: float = 0.5,
        anneal_rate: float = 3e-3,
        straight_through: bool = False,
        num_particles: int = 1,
        max_support: int = quadrature.DEFAULT_MAX_SUPPORT,
    ):
        num_latents, num_classes = getattr(encoder, "num_latents", None), getattr(encoder, "num_classes", None)
        reasons = []
        if method not in ("gumbel", "enumerate"):
            reasons.append(f"method must be 'gumbel' or 'enumerate'; got {method!r}")
        if not isinstance(num_latents, int) or not isinstance(num_classes, int) or num_latents < 1 or num_classes < 2:
            reasons.append("encoder must have integer num_latents >= 1 and num_classes >= 2 (a CategoricalEncoder)")
        elif method == "enumerate" and num_classes**num_latents > max_support:
            reasons.append(
                f"enumeration sums over C^L = {num_classes}^{num_latents} = {num_classes**num_latents} codes, "
                f"more than max_support={max_support}"
            )
        if not (0 < min_temperature <= temperature < math.inf):
            reasons.append(f"need 0 < min_temperature <= temperature < inf; got {min_temperature!r}, {temperature!r}")
        if not 0.0 <= anneal_rate < math.inf:
            reasons.append(f"anneal_rate must be finite and >= 0; got {anneal_rate!r}")
        if method == "enumerate" and num_particles != 1:
            reasons.append(f"enumeration places its own particles; leave num_particles at 1, got {num_particles!r}")
        if reasons:
            raise ValueError("invalid DiscreteVAE set-up:\n  - " + "\n  - ".join(reasons))
        prior = OneHotLatents(torch.zeros(num_latents, num_classes))
        super().__init__(
            encoder, decoder, likelihood, num_latents * num_classes, num_particles=num_particles, prior=prior
        )
        self.method, self.straight_through, self.max_support = method, straight_through, max_support
        self.temperature0, self.min_temperature, self.anneal_rate = (
            float(temperature),
            float(min_temperature),
            anneal_rate,
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def temperature(self) -> float:
        """``tau_t = max(tau_min, tau_0 exp(-r t))`` at the current training step."""
        return max(self.min_temperature, self.temperature0 * math.exp(-self.anneal_rate * int(self.step)))

    def _decode_log_lik(self, z: Tensor, x: Tensor) -> Tensor:
        return self.log_likelihood(z.flatten(-2), x)

    def forward(self, x) -> LossOutput:
        """The loss on a batch ``x [B, *event]``; a training-mode call advances the temperature schedule."""
        if isinstance(x, (tuple, list)):
            x = x[0]
        q = self.encoder(x)
        if self.method == "enumerate":
            log_prior = -self.encoder.num_latents * math.log(self.encoder.num_classes)

            def log_joint(z):  # z [C^L, B, L, C]: every code
                return log_prior + self._decode_log_lik(z, x)

            out = loss(log_joint, q.base, estimator=quadrature.enumerate(self.max_support))
            out.z = out.z.flatten(-2)
        else:
            family = RelaxedOneHotCategoricalStraightThrough if self.straight_through else RelaxedOneHotCategorical
            relaxed = family(
                torch.tensor(self.temperature(), dtype=q.logits.dtype), logits=q.logits, validate_args=False
            )
            z = relaxed.rsample((self.num_particles,))  # [K, B, L, C]
            kl = kl_divergence(q.base, self.custom_prior.base)  # [B], the categorical KL (Jang et al.)
            log_w = self._decode_log_lik(z, x) - kl
            bound = log_w.mean(0)
            out = LossOutput(-bound.mean(), bound.detach(), log_w.detach(), z.detach().flatten(-2))
        if self.training:
            with torch.no_grad():
                self.step += 1
        return out
