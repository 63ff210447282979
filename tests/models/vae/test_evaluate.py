"""Evaluation against an exact marginal likelihood, and chunking that changes nothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

import vitorch as vt
from vitorch.models import vae
from vitorch.models.vae.evaluation import _stream

from conftest import Z

N_DATA, D, SIGMA = 12, 3, 0.5


class ExactPosterior(nn.Module):
    """The exact posterior of z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I) when W has orthogonal columns."""

    def __init__(self, w, b, sigma, shift=0.0):
        super().__init__()
        self.w, self.b, self.sigma, self.shift = w, b, sigma, shift
        self.var = 1.0 / (1.0 + w.pow(2).sum(0) / sigma**2)  # diagonal because W^T W is

    def forward(self, x):
        loc = self.var * ((x - self.b) @ self.w) / self.sigma**2 + self.shift
        return vt.DiagNormal(loc, self.var.sqrt().expand_as(loc), validate_args=False)


def linear_gaussian(shift=0.0):
    q, _ = torch.linalg.qr(torch.randn(8, D))
    w = q * torch.tensor([2.0, 1.0, 0.5])  # orthogonal columns of different lengths
    b = torch.randn(8)
    dec = nn.Linear(D, 8)
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    model = vae.VAE(ExactPosterior(w, b, SIGMA, shift), dec, vae.Gaussian(scale=SIGMA), latent_dim=D)
    z = torch.randn(N_DATA, D)
    x = z @ w.T + b + SIGMA * torch.randn(N_DATA, 8)
    exact = MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(8)).log_prob(x)
    return model, x, exact


def test_exact_posterior_gives_log_evidence_everywhere():
    # With q the exact posterior every log-weight equals log p(x): the ELBO, IWAE_K and
    # every chunking return it up to rounding, and ELBO = reconstruction - KL exactly.
    model, x, exact = linear_gaussian()
    torch.testing.assert_close(vae.iwae_log_likelihood(model, x, num_particles=50, chunk_size=7), exact)
    metrics = vae.evaluate(model, x, num_particles=40, batch_size=5)
    assert metrics["log_likelihood"] == pytest.approx(float(exact.mean()), rel=1e-10)
    assert metrics["elbo"] == pytest.approx(float(exact.mean()), rel=1e-10)
    q = model.encoder(x)
    kl = float(kl_divergence(q, model.prior(x)).mean())
    # The KL column is a Monte Carlo average over 40 x 12 draws of log q - log p: compare with
    # its own standard error, Z of them (conftest), estimated from a fresh set of draws.
    z = q.sample((40,))
    terms = q.log_prob(z) - model.log_prior(z)
    se = float(terms.std() / math.sqrt(terms.numel()))
    assert abs(metrics["kl"] - kl) <= Z * se
    assert metrics["reconstruction"] - metrics["kl"] == pytest.approx(metrics["elbo"], rel=1e-10)
    # The VAE's own training bound (IWAE through vt.loss) is the same number.
    model.objective, model.num_particles = vt.objectives.iwae, 4
    torch.testing.assert_close(model(x).bound, exact)


@pytest.mark.parametrize("chunk_size, max_elements", [(16, None), (48, None), (None, 8 * 8 * 16)])
def test_chunked_equals_unchunked(chunk_size, max_elements):
    # A shifted encoder makes the log-weights vary.  The chunks draw the same normal
    # numbers as one big draw when each chunk's size is a multiple of 16 (torch's CPU
    # sampler fills blocks of 16), so the results agree to rounding.  Chunks of 48 leave
    # a ragged last chunk of 16; max_elements = 8 data x 8 entries x 16 gives chunks of 16.
    model, x, exact = linear_gaussian(shift=0.3)
    x, exact = x[:8], exact[:8]
    kw = {} if max_elements is None else dict(max_elements=max_elements)
    torch.manual_seed(1)
    whole = vae.iwae_log_likelihood(model, x, num_particles=64, batch_size=8, chunk_size=64)
    torch.manual_seed(1)
    chunked = vae.iwae_log_likelihood(model, x, num_particles=64, batch_size=8, chunk_size=chunk_size, **kw)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-10)
    assert float((whole - exact).abs().max()) > 1e-3  # the shift makes the log-weights vary


def test_iwae_is_between_elbo_and_evidence():
    # Sandwich ELBO <= IWAE_K <= log p(x): IWAE_K - ELBO is positive in expectation and
    # log p(x) - IWAE_K too; the second is checked on the data average within Z standard errors.
    # A small shift keeps the weights light-tailed, so the standard error means something.
    model, x, exact = linear_gaussian(shift=0.05)
    K = 200
    lse, s_w, _, _ = _stream(model, x, K, 100, None, 1 << 22)
    iw = lse - math.log(K)
    elbo = s_w / K
    assert bool((iw >= elbo).all())  # Jensen on the same particles: log mean exp >= mean
    gap = exact - iw
    se = float(gap.std() / math.sqrt(gap.numel()))
    assert float(gap.mean()) >= -Z * se


def test_active_units_of_a_flow_encoder_use_sample_means():
    model = vae.iaf_vae(8, latent_dim=2, hidden=(6,))
    x = torch.bernoulli(torch.full((20, 8), 0.5))
    means = vae.latent_means(model, x, num_draws=4)
    assert means.shape == (20, 2)
    assert vae.evaluate(model, x, num_particles=3)["active_units"] in (0, 1, 2)


def test_evaluate_takes_what_fit_takes_as_eval_data():
    # Regression: vae.evaluate(model, digits("test"), K) raised "TypeError: 'int' object is not
    # callable" (ImageData.dim is a property), although fit accepted the same object as eval_data.
    test = vt.data.digits("test")  # binarized dynamically by default
    model = vae.VAE.mlp(64, 2, (8,))
    vt.fit(model, vt.data.digits("train").subset(64), steps=2, batch_size=32, eval_data=test, progress=False)

    def scored(data):
        torch.manual_seed(3)
        return vae.evaluate(model, data, num_particles=5)

    got = scored(test)
    # One binarization, drawn with a fixed seed: repeated evaluations score the same images.
    assert scored(test) == got
    fixed = test.tensor(generator=torch.Generator().manual_seed(0))
    assert scored(fixed) == got
    # A tuple (x, y) and a Dataset of (x, y) items read x, as fit does.
    labels = test.labels
    assert scored((fixed, labels)) == got
    assert scored(torch.utils.data.TensorDataset(fixed, labels)) == got
    torch.testing.assert_close(vae.latent_means(model, test), vae.latent_means(model, fixed))
    with pytest.raises(TypeError, match="got str"):
        vae.evaluate(model, "test images", num_particles=5)
