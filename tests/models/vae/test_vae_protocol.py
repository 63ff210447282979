"""The VAE zoo passes the model protocol (:class:`vitorch.testing.ModelTestCase`).

Four variants: a diagonal-Gaussian encoder, an IAF encoder, the IWAE bound with DReG
gradients, and the Dirichlet-latent VAE.  The first three use a linear decoder with a
fixed-scale Gaussian likelihood, the conjugate case where the log evidence is exact,
``p(x) = N(x; b, W W^T + sigma^2 I)`` (a probabilistic PCA model, Tipping & Bishop 1999),
so the inherited bound test has a target.  The zoo's default Bernoulli MLP (its decoder
scored through :func:`vitorch.kernels.bernoulli_linear_log_prob`) and the Dirichlet VAE
have no closed-form evidence; their bound test is skipped.
"""

from __future__ import annotations

from torch import nn
from vae_cases import BINARY_DIM, DATA_DIM, LATENT, SIGMA, BinaryCase, LinearGaussianCase

import vitorch as vt
from vitorch.models import vae


def _linear_gaussian(encoder: nn.Module, **options) -> vae.VAE:
    return vae.VAE(encoder, nn.Linear(LATENT, DATA_DIM), vae.Gaussian(scale=SIGMA), LATENT, **options)


class TestDiagGaussianVAEProtocol(LinearGaussianCase):
    def make_model(self):
        return _linear_gaussian(vae.GaussianEncoder(None, DATA_DIM, LATENT, hidden=(8,)))


class TestIAFVAEProtocol(LinearGaussianCase):
    def make_model(self):
        features = nn.Sequential(nn.Linear(DATA_DIM, 8), vae.Tanh())
        return _linear_gaussian(vae.IAFEncoder(features, 8, LATENT, num_flows=2, flow_hidden=(8,)))


class TestIWAEDregVAEProtocol(LinearGaussianCase):
    def make_model(self):
        return _linear_gaussian(
            vae.GaussianEncoder(None, DATA_DIM, LATENT, hidden=(8,)),
            objective=vt.objectives.iwae,
            estimator=vt.estimators.dreg,
            num_particles=4,
        )


class TestBernoulliMLPVAEProtocol(BinaryCase):
    """The zoo's default model (tanh MLP, Bernoulli decoder through the kernel)."""

    def make_model(self):
        return vae.VAE.mlp(BINARY_DIM, latent_dim=2, hidden=(8,))


class TestDirichletVAEProtocol(BinaryCase):
    """The Dirichlet-latent VAE (RSVI draws, symmetric Dirichlet prior)."""

    def make_model(self):
        return vae.dirichlet_vae(BINARY_DIM, latent_dim=3, hidden=(8,))
