"""Encoders: networks ``x [B, *event] -> family`` with batch shape ``[B]`` and event ``[D]``.

`GaussianEncoder` gives a diagonal Gaussian, `IAFEncoder` a Gaussian followed by IAF
steps that read the encoder's features as context, `DirichletEncoder` an (RSVI)
Dirichlet on the simplex; `SymmetricDirichletPrior` is the matching learnable prior.
Families are built with ``validate_args=False``, as in `vitorch.models.vae.networks`.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014).
    Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow (2016).
    Naesseth et al., Reparameterization Gradients through Acceptance-Rejection
    Sampling Algorithms (2017).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn import functional as F

from ..._autocast import full_precision
from ...families import DiagNormalHead
from ...families.dirichlet import Dirichlet, RSVIDirichlet
from ...flows import IAF, ConditionalFlow, ElementwiseAffine
from .networks import Tanh, _check_sizes

__all__ = ["GaussianEncoder", "IAFEncoder", "DirichletEncoder", "SymmetricDirichletPrior"]


class GaussianEncoder(nn.Module):
    """``x -> DiagNormal``: a feature network followed by `vitorch.DiagNormalHead`.

    Args:
        features: ``x [B, *event] -> [B, F]``, or ``None`` to feed ``x [B, F]`` to the
            head directly (the plain MLP encoder, the head's ``hidden`` layers doing
            the work).
        feature_dim: ``F``.
        latent_dim: ``D``.
        hidden: hidden widths inside the head.
        activation: the head's hidden activation.

    Shapes: ``x [B, *event] -> DiagNormal`` with batch ``[B]`` and event ``[D]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014) (the amortized
        diagonal-Gaussian encoder).
    """

    def __init__(
        self,
        features: nn.Module | None,
        feature_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (),
        activation: type[nn.Module] = Tanh,
    ):
        super().__init__()
        _check_sizes(feature_dim=feature_dim, latent_dim=latent_dim)
        self.features = features
        self.head = DiagNormalHead(feature_dim, latent_dim, hidden, activation, validate_args=False)
        self.latent_dim = latent_dim

    def forward(self, x: Tensor):
        # No identity module in the hot path: one Python call fewer per step.
        return self.head(x if self.features is None else self.features(x))


class IAFEncoder(nn.Module):
    """``x -> Flow``: an amortized Gaussian then ``num_flows`` IAF steps, all reading the encoder's features.

    The first transform, an `vitorch.flows.ElementwiseAffine` conditioned on
    the features, is the usual diagonal-Gaussian posterior; each IAF step then
    reads the same features as context and alternates the autoregressive order.
    Sampling is one pass per step; ``log_prob`` (needed by STL and DReG) costs
    ``D`` passes per IAF step, so pair this encoder with ``reparam``.

    Args:
        features: ``x [B, *event] -> [B, F]``.
        feature_dim: ``F``.
        latent_dim: ``D``.
        num_flows: IAF steps after the Gaussian.
        flow_hidden: hidden widths of each IAF step's autoregressive network.

    Shapes: ``x [B, *event] -> Flow`` with batch ``[B]`` and event ``[D]``.

    References:
        Kingma et al., *Improved Variational Inference with Inverse Autoregressive
        Flow* (2016).
    """

    def __init__(
        self,
        features: nn.Module,
        feature_dim: int,
        latent_dim: int,
        num_flows: int = 2,
        flow_hidden: Sequence[int] = (128,),
    ):
        super().__init__()
        _check_sizes(feature_dim=feature_dim, latent_dim=latent_dim)
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 0:
            raise ValueError(f"num_flows must be an integer >= 0; got {num_flows!r}")
        reverse = list(range(latent_dim))[::-1]
        steps = [
            IAF(latent_dim, hidden=flow_hidden, context_features=feature_dim, order=reverse if i % 2 else None)
            for i in range(num_flows)
        ]
        self.features = features
        self.flow = ConditionalFlow([ElementwiseAffine(latent_dim, context_features=feature_dim, hidden=())] + steps)
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> Distribution:
        q = self.flow(self.features(x))
        q._validate_args = False
        return q


class DirichletEncoder(nn.Module):
    """``x -> Dirichlet`` on the ``D``-simplex: concentrations ``softplus(linear(features)) + min_concentration``.

    Args:
        features: ``x [B, *event] -> [B, F]``.
        feature_dim: ``F``.
        latent_dim: ``D``, the number of simplex components.
        rsvi: ``True`` draws by RSVI (Marsaglia-Tsang with the acceptance correction,
            Naesseth et al., 2017; ``reparam`` then adds the correction term);
            ``False`` uses implicit reparameterization gradients (Figurnov et al., 2018).
        boost: RSVI shape augmentations ``B`` (they shrink the correction's variance).
        min_concentration: floor of the concentrations.

    Shapes: ``x [B, *event] -> Dirichlet`` with batch ``[B]`` and event ``[D]``.

    References:
        Naesseth et al., *Reparameterization Gradients through Acceptance-Rejection
        Sampling Algorithms* (2017); Figurnov, Mohamed & Mnih, *Implicit
        Reparameterization Gradients* (2018).
    """

    def __init__(
        self,
        features: nn.Module,
        feature_dim: int,
        latent_dim: int,
        rsvi: bool = True,
        boost: int = 1,
        min_concentration: float = 1e-2,
    ):
        super().__init__()
        _check_sizes(feature_dim=feature_dim, latent_dim=latent_dim)
        if latent_dim < 2:
            raise ValueError(f"a Dirichlet latent needs latent_dim >= 2 components; got {latent_dim}")
        self.features = features
        self.linear = nn.Linear(feature_dim, latent_dim)
        self.latent_dim = latent_dim
        self.min_concentration = min_concentration
        self._family = (
            (lambda c: RSVIDirichlet(c, boost, validate_args=False))
            if rsvi
            else (lambda c: Dirichlet(c, validate_args=False))
        )

    def forward(self, x: Tensor) -> Distribution:
        raw = full_precision(self.linear(self.features(x)))  # autocast: the density in float32
        return self._family(F.softplus(raw) + self.min_concentration)


class SymmetricDirichletPrior(nn.Module):
    """``p(z) = Dir(z; alpha 1_D)`` as a module (its concentration is a buffer, so it follows ``.to``).

    Has the two methods a `vitorch.models.vae.VAE` prior needs: ``log_prob(z [*S, D]) -> [*S]``
    and ``sample(shape) -> [*shape, D]``.

    Args:
        latent_dim: ``D``, the number of simplex components.
        concentration: ``alpha > 0`` (1 is uniform on the simplex).

    References:
        Naesseth et al., *Reparameterization Gradients through Acceptance-Rejection
        Sampling Algorithms* (2017) (Dirichlet latents with a Dirichlet prior).
    """

    def __init__(self, latent_dim: int, concentration: float = 1.0):
        super().__init__()
        _check_sizes(latent_dim=latent_dim)
        if not 0 < concentration < math.inf:
            raise ValueError(f"concentration must be positive and finite; got {concentration!r}")
        self.register_buffer("concentration", torch.full((latent_dim,), float(concentration)))

    def _dist(self) -> Distribution:
        return torch.distributions.Dirichlet(self.concentration, validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return self._dist().log_prob(z)

    def sample(self, shape=()) -> Tensor:
        return self._dist().sample(shape)
