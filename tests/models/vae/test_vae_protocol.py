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

import torch
from torch import nn
from torch.distributions import MultivariateNormal

import vitorch as vt
from vitorch.models import vae
from vitorch.testing import ModelTestCase

DATA_DIM, LATENT, SIGMA = 6, 2, 0.5


def _real_data():
    g = torch.Generator().manual_seed(11)
    mix = torch.randn(LATENT, DATA_DIM, generator=g)
    return torch.randn(32, LATENT, generator=g) @ mix + SIGMA * torch.randn(32, DATA_DIM, generator=g)


def _binary_data():
    g = torch.Generator().manual_seed(12)
    return torch.bernoulli(torch.full((32, 12), 0.4), generator=g)


def _linear_gaussian(encoder: nn.Module, **options) -> vae.VAE:
    return vae.VAE(encoder, nn.Linear(LATENT, DATA_DIM), vae.Gaussian(scale=SIGMA), LATENT, **options)


class _LinearGaussianCase(ModelTestCase):
    """The conjugate linear-Gaussian VAE: exact ``log p(x)`` from the decoder's weights."""

    def make_data(self):
        return _real_data()

    def exact_log_evidence(self, model, batch):
        w, b = model.decoder.weight, model.decoder.bias  # x = W z + b + sigma eps, z ~ N(0, I)
        cov = w @ w.T + SIGMA**2 * torch.eye(DATA_DIM)
        return MultivariateNormal(b, cov).log_prob(batch)

    def predict_args(self, batch):
        return (batch,)


class TestDiagGaussianVAEProtocol(_LinearGaussianCase):
    def make_model(self):
        return _linear_gaussian(vae.GaussianEncoder(None, DATA_DIM, LATENT, hidden=(8,)))


class TestIAFVAEProtocol(_LinearGaussianCase):
    def make_model(self):
        features = nn.Sequential(nn.Linear(DATA_DIM, 8), vae.Tanh())
        return _linear_gaussian(vae.IAFEncoder(features, 8, LATENT, num_flows=2, flow_hidden=(8,)))


class TestIWAEDregVAEProtocol(_LinearGaussianCase):
    def make_model(self):
        return _linear_gaussian(
            vae.GaussianEncoder(None, DATA_DIM, LATENT, hidden=(8,)),
            objective=vt.objectives.iwae,
            estimator=vt.estimators.dreg,
            num_particles=4,
        )


class TestBernoulliMLPVAEProtocol(ModelTestCase):
    """The zoo's default model (tanh MLP, Bernoulli decoder through the kernel)."""

    def make_model(self):
        return vae.VAE.mlp(12, latent_dim=2, hidden=(8,))

    def make_data(self):
        return _binary_data()

    def predict_args(self, batch):
        return (batch,)


class TestDirichletVAEProtocol(ModelTestCase):
    """The Dirichlet-latent VAE (RSVI draws, symmetric Dirichlet prior)."""

    def make_model(self):
        return vae.dirichlet_vae(12, latent_dim=3, hidden=(8,))

    def make_data(self):
        return _binary_data()

    def predict_args(self, batch):
        return (batch,)
