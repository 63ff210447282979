"""Structured VAE: with a linear-Gaussian decoder and the exact emission potentials, q is the Kalman posterior.

Oracle: `LinearGaussianSSM` (tested against a dense unrolled Gaussian in test_kalman.py) with the same
prior and emission.  With potentials ``J = C^T R^-1 C``, ``h_t = C^T R^-1 y_t`` the SVAE's posterior is
the exact smoothing posterior, so (float64, exact algebra, tolerance 1e-9):

* its smoothed means and covariances equal the Kalman smoother's;
* ``E_q[log p(y | x)] - KL(q || p)``, with the expectation in closed form, equals ``log p(y)``;
* the Monte Carlo bound ``forward`` reports is unbiased for ``log p(y)``: within 5.2 standard errors
  (false-failure rate 2e-7 per assertion).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

import vitorch as vt
from vitorch.models.ssm import LinearGaussianSSM
from vitorch.models.ssm.svae import SVAE, DeepLDS, GaussianPotentialEncoder, LDSPrior
from vitorch.testing import ModelTestCase

torch.set_default_dtype(torch.float64)

D, B, T = 2, 3, 20
F = torch.tensor([[0.9, 0.2], [-0.2, 0.9]])
Q = torch.tensor([[0.3, 0.05], [0.05, 0.2]])
M1 = torch.tensor([0.5, -0.3])
P1 = torch.tensor([[1.0, 0.3], [0.3, 0.8]])
C = torch.tensor([[1.0, 0.5], [-0.3, 1.2]])
R = torch.tensor([[0.4, 0.1], [0.1, 0.3]])


class LinearGaussianDecoder(nn.Module):
    def __init__(self, C, R):
        super().__init__()
        self.C, self.R = C, R

    def forward(self, x):
        return MultivariateNormal(x @ self.C.mT, self.R)


class ExactPotentials(nn.Module):
    """``(h_t, J_t)`` of ``p(y_t | x_t)`` as a function of ``x_t``: the emission itself (full, or diagonal ``J``)."""

    def __init__(self, C, R, diagonal=False):
        super().__init__()
        self.Rinv_C = torch.linalg.solve(R, C)
        self.J = C.mT @ self.Rinv_C
        self.diagonal = diagonal

    def forward(self, y):
        h = y @ self.Rinv_C
        J = self.J.diagonal() if self.diagonal else self.J
        return h, J.expand(*h.shape, *J.shape[1:]) if not self.diagonal else J.expand(h.shape)


def _setup(diagonal=False, seed=0):
    C_, R_ = (torch.diag(torch.tensor([1.0, 0.7])), torch.diag(torch.tensor([0.4, 0.3]))) if diagonal else (C, R)
    lgs = LinearGaussianSSM(F, Q, C_, R_, M1, P1)
    torch.manual_seed(seed)
    _, y = lgs.sample(T, (B,))
    svae = SVAE(DeepLDS(LDSPrior(D, F, Q, M1, P1), LinearGaussianDecoder(C_, R_)), ExactPotentials(C_, R_, diagonal))
    return lgs, svae, y, C_, R_


def _mask():
    observed = torch.ones(B, T, dtype=torch.bool)
    observed[0, 5] = False  # interior
    observed[1, 0] = False  # first
    observed[2, -3:] = False  # the last three: a forecast
    return observed


def _closed_form_bound(post, y, C_, R_, observed):
    resid = y - post.means @ C_.mT
    ell = MultivariateNormal(torch.zeros(D), R_).log_prob(resid)
    ell = ell - 0.5 * (torch.linalg.inv(R_) * (C_ @ post.covs @ C_.mT)).sum((-1, -2))
    if observed is not None:
        ell = torch.where(observed, ell, 0.0)
    return ell.sum(-1) - post.kl


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
@pytest.mark.parametrize("diagonal", [False, True], ids=["full_J", "diagonal_J"])
@pytest.mark.parametrize("missing", [False, True])
def test_exact_potentials_give_the_kalman_posterior_and_log_likelihood(parallel, diagonal, missing):
    lgs, svae, y, C_, R_ = _setup(diagonal)
    svae.parallel = parallel
    observed = _mask() if missing else None
    y_nan = y.clone()
    if missing:
        y_nan[~observed] = float("nan")
    with torch.no_grad():
        post = svae.posterior(y, observed)
        means, covs = lgs.smooth(y_nan)
        torch.testing.assert_close(post.means, means, rtol=0, atol=1e-9)
        torch.testing.assert_close(post.covs, covs, rtol=0, atol=1e-9)
        torch.testing.assert_close(post.q.mean, means, rtol=0, atol=1e-9)
        bound = _closed_form_bound(post, y, C_, R_, observed)
        torch.testing.assert_close(bound, lgs.log_prob(y_nan), rtol=0, atol=1e-9)


def test_monte_carlo_bound_is_unbiased_at_the_exact_posterior():
    lgs, svae, y, C_, R_ = _setup()
    observed = _mask()
    y_nan = y.clone()
    y_nan[~observed] = float("nan")
    torch.manual_seed(1)
    with torch.no_grad():
        post = svae.posterior(y, observed)
        x = post.q.rsample((4000,))
        terms = svae.model.log_lik(x, y, observed) - post.kl  # [K, B]
        se = terms.std(0) / 4000**0.5
        z = (terms.mean(0) - lgs.log_prob(y_nan)) / se
    assert (z.abs() < 5.2).all(), z
    # forward() reports the same estimator: one draw per particle, the same KL.
    out = SVAE(svae.model, svae.encoder, num_particles=3)((y, observed))
    assert out.bound.shape == (B,) and torch.isfinite(out.loss)


def test_posterior_draws_have_the_smoother_moments():
    lgs, svae, y, _, _ = _setup(seed=2)
    torch.manual_seed(3)
    with torch.no_grad():
        post = svae.posterior(y[:1])
        x = post.q.sample((20000,))[:, 0]  # [N, T, D]
    means, covs = lgs.smooth(y[:1])
    se = (covs[0].diagonal(dim1=-2, dim2=-1) / 20000).sqrt()
    assert ((x.mean(0) - means[0]).abs() / se < 5.2).all()


def test_gradients_reach_encoder_decoder_and_prior():
    torch.manual_seed(0)
    p = 5
    decoder = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, p))

    class Dec(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = decoder

        def forward(self, x):
            return Independent(Normal(self.net(x), 0.5), 1)

    svae = SVAE(DeepLDS(LDSPrior(D), Dec()), GaussianPotentialEncoder(p, D, hidden=(16,)), num_particles=2)
    y = torch.randn(4, 12, p)
    observed = torch.rand(4, 12) > 0.3
    svae((y, observed)).loss.backward()
    for name, param in svae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_bad_input():
    _, svae, y, _, _ = _setup()
    with pytest.raises(ValueError, match=r"\[B, T, p\]"):
        svae.posterior(y[0])
    with pytest.raises(ValueError, match="observed"):
        svae.posterior(y, torch.ones(B, T))
    with pytest.raises(ValueError, match="positive"):
        svae.posterior_from_potentials(torch.zeros(B, T, D), -torch.ones(B, T, D))
    with pytest.raises(TypeError, match="DeepLDS"):
        SVAE(LDSPrior(D), svae.encoder)
    with pytest.raises(ValueError, match="num_particles"):
        SVAE(svae.model, svae.encoder, num_particles=0)
    with pytest.raises(ValueError, match="state_dim"):
        LDSPrior(0)
    with pytest.raises(ValueError, match="transition_matrix"):
        LDSPrior(2, transition_matrix=torch.eye(3))
    with pytest.raises(TypeError, match="batch"):
        svae([y, y, y])


class TestSVAEProtocol(ModelTestCase):
    """A learnable prior, an MLP encoder and the linear-Gaussian decoder: the Kalman evidence bounds the ELBO."""

    batch_size = 8
    fit_kwargs = {"lr": 1e-2}
    bound_draws = 50

    def make_model(self):
        decoder = LinearGaussianDecoder(C, R)
        return SVAE(DeepLDS(LDSPrior(D), decoder), GaussianPotentialEncoder(D, D, hidden=(8,)), num_particles=2)

    def make_data(self):
        torch.manual_seed(0)
        return LinearGaussianSSM(F, Q, C, R, M1, P1).sample(10, (16,))[1]

    def exact_log_evidence(self, model, batch):
        Fm, Qm, m1, P1m = (t.detach() for t in model.model.prior.matrices())
        return LinearGaussianSSM(Fm, Qm, C, R, m1, P1m).log_prob(batch)

    def predict_args(self, batch):
        return (batch,)


def test_fit_improves_the_bound():
    torch.manual_seed(0)
    y = LinearGaussianSSM(F, Q, C, R, M1, P1).sample(15, (32,))[1]
    svae = SVAE(DeepLDS(LDSPrior(D), LinearGaussianDecoder(C, R)), GaussianPotentialEncoder(D, D), num_particles=4)
    with torch.no_grad():
        before = svae(y).bound.mean()
    vt.fit(svae, y, steps=25, batch_size=32, lr=5e-2, progress=False, seed=0)
    with torch.no_grad():
        after = svae(y).bound.mean()
        Fm, Qm, m1, P1m = svae.model.prior.matrices()
        exact = LinearGaussianSSM(Fm, Qm, C, R, m1, P1m).log_prob(y).mean()
    assert after > before + 2
    assert after < exact + 0.5  # a lower bound, up to Monte Carlo error (K = 4, 32 sequences: se ~0.2)
