"""ARD-VAE: the Normal-Gamma prior and the ground truth of finding the rank of probabilistic-PCA data.

Oracles: the conjugate Gamma update and the Student-t marginal of the hierarchy against
scipy (``t`` log-density, and numerical integration of ``N(z; 0, 1/alpha) Gamma(alpha; a, b)``
over ``alpha``); on data from a linear-Gaussian generator of known rank ``r`` (Tipping &
Bishop, 1999) with more latent axes than ``r``, the trained model's relevant axes number ``r``
(Saha, Joshi & Whitaker, 2025).  The default run trains one seed (a few seconds); the slow
test repeats it over seeds and ranks.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats
from torch import nn
from vae_cases import ppca, train

from vitorch.models import vae


def test_prior_update_and_student_t_marginal():
    prior = vae.ARDPrior(3, a0=0.5, b0=0.2).double()
    codes = torch.randn(11, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prior.update(codes)
    a, b = 0.5 + 11 / 2, 0.2 + 0.5 * codes.pow(2).sum(0)
    torch.testing.assert_close(prior.concentration, torch.full((3,), a, dtype=torch.float64))
    torch.testing.assert_close(prior.rate, b)
    torch.testing.assert_close(prior.relevance, b / (a - 1))
    z = torch.tensor([[0.3, -1.2, 2.5], [0.0, 0.1, -0.4]], dtype=torch.float64)
    ref = sum(stats.t.logpdf(z[:, d].numpy(), df=2 * a, scale=math.sqrt(b[d] / a)) for d in range(3))
    torch.testing.assert_close(prior.log_prob(z), torch.as_tensor(ref))
    # the marginal of the hierarchy, by quadrature over the precision
    zd, bd = 0.7, float(b[1])
    dens, _ = integrate.quad(
        lambda alpha: stats.norm.pdf(zd, scale=alpha**-0.5) * stats.gamma.pdf(alpha, a, scale=1 / bd), 0, math.inf
    )
    one = torch.tensor([[0.0, zd, 0.0]], dtype=torch.float64)
    t_only = prior.log_prob(one) - prior._law(one).log_prob(one)[..., [0, 2]].sum(-1)
    assert float(t_only) == pytest.approx(math.log(dens), rel=1e-7)


def _ppca(rank: int, n: int = 400, seed: int = 1):
    return ppca(rank, n=n, data_dim=8, sigma=0.3, seed=seed)


def _fit_ard(x, sigma, latent, seed, steps=400, lr=0.05):
    torch.manual_seed(seed)
    encoder = vae.GaussianEncoder(None, x.shape[1], latent)
    model = vae.ARDVAE(encoder, nn.Linear(latent, x.shape[1]), vae.Gaussian(scale=sigma), latent)
    train(model, x, steps, lr)  # lr 0.05 -> 0.005
    model.refit_prior(x)
    return model


def test_finds_the_rank_of_ppca_data():
    x, sigma = _ppca(rank=2)
    model = _fit_ard(x, sigma, latent=5, seed=0)
    rel = model.relevance / model.relevance.max()
    assert int(model.relevant_dims().sum()) == 2, rel


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_finds_the_rank_over_seeds(rank):
    x, sigma = _ppca(rank=rank, seed=rank)
    for seed in range(4):
        model = _fit_ard(x, sigma, latent=6, seed=seed, steps=600)
        assert int(model.relevant_dims().sum()) == rank, (seed, model.relevance / model.relevance.max())


def test_training_forward_conditions_on_the_batch():
    x, sigma = _ppca(rank=2, n=20)
    model = vae.ARDVAE(vae.GaussianEncoder(None, 8, 3), nn.Linear(3, 8), vae.Gaussian(scale=sigma), 3)
    model.eval()
    before = model.custom_prior.rate.clone()
    model(x)
    assert torch.equal(model.custom_prior.rate, before)
    model.train()
    model(x)
    means = model.encoder(x).mean.detach()
    torch.testing.assert_close(model.custom_prior.rate, 1e-3 + 0.5 * means.pow(2).sum(0))
    assert "custom_prior.rate" in model.state_dict()
    # a refit averages over more codes but counts as many as the training batch had
    big = torch.cat([x] * 5)
    model.refit_prior(big)
    assert float(model.custom_prior.concentration[0]) == pytest.approx(1e-3 + 0.5 * 20)
    torch.testing.assert_close(model.custom_prior.rate, 1e-3 + 0.5 * 20 * means.pow(2).mean(0))


def test_bad_input():
    with pytest.raises(ValueError, match="a0 and b0"):
        vae.ARDPrior(3, a0=0.0)
    with pytest.raises(ValueError, match="latent_dim"):
        vae.ARDPrior(0)
    with pytest.raises(ValueError, match="codes"):
        vae.ARDPrior(3).update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="prior"):
        vae.ard_vae(8, latent_dim=3, prior=torch.distributions.Normal(0.0, 1.0))
    model = vae.ard_vae(8, latent_dim=3, hidden=(4,))
    with pytest.raises(ValueError, match="threshold"):
        model.relevant_dims(1.5)
