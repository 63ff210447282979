"""The SSM zoo's trainable modules follow the model protocol (vitorch.testing.ModelTestCase), plus their own checks.

One datum is one sequence: a batch is ``y [B, T, p]``.  ``KalmanSSM``'s bound is the exact
Kalman log-likelihood; ``SSMVI``'s is a Monte Carlo bound, below it on a linear-Gaussian model.
"""

from __future__ import annotations

import pytest
import torch
from _dense import random_model
from torch import nn
from torch.distributions import Independent, Normal

import vitorch as vt
from vitorch.models import ssm
from vitorch.testing import ModelTestCase

T_STEPS = 6


def _series(num: int, seed: int) -> torch.Tensor:
    """``num`` sequences ``[num, T, 1]`` from a fixed 2-state model (a fixed generator: same data every call)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**31, (), generator=g)))
        F, Q, H, R, m1, P1 = random_model(2, 1)
        return ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).sample(T_STEPS, (num,))[1]


def _kalman() -> ssm.KalmanSSM:
    F, Q, H, R, m1, P1 = random_model(2, 1)
    return ssm.KalmanSSM(F, Q, H, R, m1, P1)


class TestKalmanSSMProtocol(ModelTestCase):
    """Exact maximum likelihood: the bound is the Kalman log-likelihood itself."""

    def make_model(self):
        return _kalman()

    def make_data(self):
        return _series(16, 1)

    def exact_log_evidence(self, model, batch):
        return model.ssm().log_prob(batch)

    def predict_args(self, batch):
        return (batch,)


class TestLinearGaussianVIProtocol(ModelTestCase):
    """A Gaussian Markov chain guide on one series of a learnable linear-Gaussian model."""

    batch_size = 1

    def make_model(self):
        return ssm.SSMVI(_kalman(), ssm.MarkovGaussianGuide(T_STEPS, 2), num_particles=4)

    def make_data(self):
        return _series(1, 2)  # one series: the guide has free parameters for it

    def exact_log_evidence(self, model, batch):
        return model.model.log_prob(batch)

    def predict_args(self, batch):
        return (batch,)


class Log1p(nn.Module):
    def forward(self, y):
        return torch.log1p(y)


def _poisson_model() -> ssm.StateSpaceModel:
    init = lambda: Independent(Normal(torch.zeros(2), 1.0), 1)  # noqa: E731
    return ssm.StateSpaceModel(
        init, ssm.GaussianTransition(0.8 * torch.eye(2), 0.3, learn_scale=True), ssm.PoissonEmission(nn.Linear(2, 3))
    )


class TestPoissonVIProtocol(ModelTestCase):
    """Counts through a log-rate network, the amortized structured guide, IWAE with DReG."""

    def make_model(self):
        guide = ssm.StructuredInferenceNetwork(3, 2, rnn_dim=8, embed=Log1p())
        return ssm.SSMVI(
            _poisson_model(), guide, num_particles=4, objective=vt.objectives.iwae, estimator=vt.estimators.dreg
        )

    def make_data(self):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            return _poisson_model().sample(T_STEPS, (16,))[1]

    def predict_args(self, batch):
        return (batch,)


# ----- KalmanSSM ------------------------------------------------------------------------


def test_kalman_bound_is_the_exact_log_likelihood():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    model = ssm.KalmanSSM(F, Q, H, R, m1, P1)
    y = _series(5, 4)
    out = model(y)
    exact = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).log_prob(y)
    # The Cholesky round trip of the covariances only: float64 rounding.
    torch.testing.assert_close(out.bound, exact, rtol=1e-12, atol=1e-12)
    assert out.log_w is None and out.z is None
    torch.testing.assert_close(out.loss, -out.bound.mean(), rtol=0, atol=0)
    torch.testing.assert_close(model.predict(y), ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).smooth(y)[0])


def test_kalman_state_is_stored_as_written():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    model = ssm.KalmanSSM(F, Q, H, R, m1, P1, learn=("transition_cov", "emission_matrix"))
    assert set(dict(model.named_parameters())) == {"transition_cov_tril", "emission_matrix"}
    assert set(dict(model.named_buffers())) == {"transition_matrix", "emission_cov", "init_mean", "init_cov"}
    L = torch.linalg.cholesky(Q)
    torch.testing.assert_close(model.transition_cov_tril.diagonal().exp(), L.diagonal(), rtol=1e-14, atol=0)
    torch.testing.assert_close(model.ssm().transition_cov, Q, rtol=1e-12, atol=1e-12)


def test_kalman_maximum_likelihood_through_fit():
    # Local level on simulated data: vt.fit (Adam on the log Cholesky factors) reaches the
    # log-likelihood of an L-BFGS optimum of the same function, to 1e-4 nats.
    one = torch.ones(1, 1)
    truth = ssm.LinearGaussianSSM(one, 0.3 * one, one, 1.0 * one, torch.zeros(1), one)
    y = truth.sample(12, (8,))[1]
    model = ssm.KalmanSSM(one, one, one, one, torch.zeros(1), one, learn=("transition_cov", "emission_cov"))
    vt.fit(model, y, steps=150, batch_size=8, lr=0.1, seed=0, progress=False)
    log_var = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([log_var], max_iter=100, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        v = log_var.exp()
        nll = -ssm.LinearGaussianSSM(one, v[0] * one, one, v[1] * one, torch.zeros(1), one).log_prob(y).sum()
        nll.backward()
        return nll

    opt.step(closure)
    best = -closure().item()
    with torch.no_grad():
        reached = model.log_prob(y).sum().item()
    assert best - 1e-4 <= reached <= best + 1e-8


def test_kalman_bad_input():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    with pytest.raises(ValueError, match="learn names"):
        ssm.KalmanSSM(F, Q, H, R, m1, P1, learn=("transition_noise",))
    with pytest.raises(ValueError, match="init_cov must be positive definite to be learned"):
        ssm.KalmanSSM(F, Q, H, R, m1, torch.zeros(2, 2), learn=("init_cov",))
    with pytest.raises(ValueError, match="init_cov"):
        ssm.KalmanSSM(F, Q, H, R, m1, None)  # neither init_cov nor a diffuse state
    with pytest.raises(ValueError, match="emission_cov"):
        ssm.KalmanSSM(F, Q, H, -R, m1, P1)
    with pytest.raises(ValueError, match=r"\[B, T, obs_dim\]"):
        ssm.KalmanSSM(F, Q, H, R, m1, P1)(torch.zeros(6, 1))
    with pytest.raises(TypeError, match="tensor"):
        ssm.KalmanSSM(F, Q, H, R, m1, P1)("y")


def test_kalman_diffuse_mask_matches_linear_gaussian():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    mask = torch.tensor([True, False])
    y = _series(2, 5)
    model = ssm.KalmanSSM(F, Q, H, R, m1, P1, diffuse=mask)
    expected = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=mask).log_prob(y)
    torch.testing.assert_close(model(y).bound, expected, rtol=1e-12, atol=1e-12)


# ----- SSMVI ------------------------------------------------------------------------------


def test_ssmvi_forward_is_vt_loss_on_the_same_draws():
    model = _kalman()
    guide = ssm.StructuredInferenceNetwork(1, 2, rnn_dim=8)
    vi = ssm.SSMVI(model, guide, 5, objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
    y = _series(3, 6)
    torch.manual_seed(7)
    out = vi(y)
    torch.manual_seed(7)
    ref = vt.loss(lambda x: model.log_joint(x, y), guide(y), 5, vt.objectives.iwae, vt.estimators.dreg)
    assert out.bound.shape == (3,) and out.log_w.shape == (5, 3)
    assert torch.equal(out.bound, ref.bound) and torch.equal(out.loss, ref.loss)
    torch.manual_seed(7)
    assert torch.equal(vi((y,)).bound, ref.bound)  # a tuple batch (y,) is the same batch


def test_ssmvi_predict_is_the_guide_mean():
    vi = ssm.SSMVI(_kalman(), ssm.MarkovGaussianGuide(T_STEPS, 2))
    y = _series(1, 8)
    torch.testing.assert_close(vi.predict(y), vi.guide(y).mean, rtol=0, atol=0)
    assert vi.predict(y).shape == (1, T_STEPS, 2)
    amortized = ssm.SSMVI(_kalman(), ssm.StructuredInferenceNetwork(1, 2, rnn_dim=8))
    assert amortized.predict(_series(4, 8), num_samples=16).shape == (4, T_STEPS, 2)


def test_one_series_guides_refuse_other_batches():
    guide = ssm.MarkovGaussianGuide(T_STEPS, 2)
    assert guide(torch.zeros(1, T_STEPS, 1)).batch_shape == (1,)
    assert guide().batch_shape == ()
    with pytest.raises(ValueError, match="one series"):
        guide(torch.zeros(2, T_STEPS, 1))
    with pytest.raises(ValueError, match="T = 6"):
        guide(torch.zeros(1, T_STEPS + 1, 1))
    with pytest.raises(TypeError, match="log_joint"):
        ssm.SSMVI(nn.Linear(2, 2), guide)


def test_sde_through_ssmvi_on_its_own_series():
    drift = lambda x, th: -th[..., :1] * x  # noqa: E731  (Ornstein-Uhlenbeck)
    diffusion = lambda x, th: (th[..., 1:2] ** 2).unsqueeze(-1) * torch.eye(1).expand(*x.shape[:-1], 1, 1)  # noqa: E731
    prior = Independent(Normal(torch.zeros(2), 1.0), 1)
    sde = ssm.EulerMaruyamaSDE(drift, diffusion, torch.ones(1), 0.1, 5, [2, 5], 0.3, prior)
    y = torch.randn(2, 1)
    guide = ssm.SDEPosterior(sde, y, hidden=(8,))
    vi = ssm.SSMVI(sde, guide, 3)
    torch.manual_seed(1)
    out = vi(y[None])
    torch.manual_seed(1)
    ref = vt.loss(lambda z: sde.log_joint(z, y), guide(), 3)
    assert out.bound.shape == (1,) and out.log_w.shape == (3, 1)
    torch.testing.assert_close(out.log_w[:, 0], ref.log_w, rtol=1e-12, atol=1e-12)
    assert vi.predict(y[None], num_samples=8).shape == (1, sde.event_size)
    with pytest.raises(ValueError, match="differs"):
        vi(y[None] + 1.0)
