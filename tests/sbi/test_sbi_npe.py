"""NPE against exact posteriors: the Gaussian-linear simulator and a prior-only simulator.

Oracles: for theta ~ N(0, I_D) and x | theta ~ N(theta, s^2 I_D) the posterior is
N(x / (1 + s^2), s^2 / (1 + s^2) I_D); when x ignores theta the posterior is the prior.

"Small" KL: the tests require KL(q || p) < 0.05 nats.  In one dimension that is a mean
off by 0.32 posterior standard deviations or a variance off by a factor outside
(0.70, 1.37); the prior-to-posterior KL here is about 1.3 nats, so a flow that learned
nothing (q = prior) fails by a factor of 25.  The KL is a Monte Carlo average of
log q - log p over draws from q; the assertion uses its upper confidence bound
(estimate + Z standard errors, Z = 5.2), so the test can only fail spuriously when the
true KL is near the threshold.  Training is seeded, hence deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from vitorch.sbi import NPE, box_uniform, sbc_ranks, sbc_test, sequential_npe, simulate

Z = 5.2
KL_SMALL = 0.05
S = 0.5  # simulator noise
D = 2


def _simulator(theta):
    return theta + S * torch.randn_like(theta)


def _exact(x):
    v = S**2 / (1 + S**2)
    return Independent(Normal(x / (1 + S**2), math.sqrt(v) * torch.ones_like(x)), 1)


def _kl_upper(q, p, n=4000):
    """Monte Carlo KL(q || p) per batch element, and its upper bound (estimate + Z s.e.)."""
    with torch.no_grad():
        if hasattr(q, "rsample_and_log_prob"):
            theta, log_q = q.rsample_and_log_prob((n,))
        else:
            theta = q.sample((n,))
            log_q = q.log_prob(theta)
        diff = log_q - p.log_prob(theta)
    est, se = diff.mean(0), diff.std(0) / math.sqrt(n)
    return est, est + Z * se


@pytest.fixture(scope="module")
def gaussian_npe():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        prior = MultivariateNormal(torch.zeros(D), torch.eye(D))
        theta, x = simulate(prior, _simulator, 2000, seed=11)
        torch.manual_seed(12)
        npe = NPE(prior, (D,), transforms=2, hidden=(32, 32))
        history = npe.fit(theta, x, batch_size=200, lr=2e-3, max_epochs=120, patience=10, seed=13)
        yield prior, npe, history
    finally:
        torch.set_default_dtype(old)


def test_gaussian_linear_kl_small(gaussian_npe):
    prior, npe, history = gaussian_npe
    assert history.evals, "fit evaluated on the held-out split"
    x_o = simulate(prior, _simulator, 8, seed=21)[1].float()
    est, upper = _kl_upper(npe.posterior(x_o), _exact(x_o))
    assert bool((upper < KL_SMALL).all()), f"KL(q || p) estimates {est.tolist()}, upper bounds {upper.tolist()}"
    # Power: the prior as the "posterior" is far from small at the same x.
    _, prior_upper = _kl_upper(prior.expand((8,)), _exact(x_o))
    assert bool((prior_upper > 10 * KL_SMALL).all())


def test_gaussian_linear_sbc_uniform(gaussian_npe):
    prior, npe, _ = gaussian_npe
    theta, x = simulate(prior, _simulator, 300, seed=31)
    ranks = sbc_ranks(npe.posterior, theta, x, num_posterior_samples=99)
    # level 1e-4: a calibrated posterior fails this with probability <= 1e-4 (Bonferroni over D).
    result = sbc_test(ranks, 99, bins=10, level=1e-4)
    assert result.passed, f"SBC chi-square p-values {result.p_values.tolist()}"

    # Power at the same N: an overconfident posterior (half the true scale) is rejected.
    def overconfident(xs):
        p = _exact(xs)
        return Independent(Normal(p.base_dist.loc, 0.5 * p.base_dist.scale), 1)

    assert not sbc_test(sbc_ranks(overconfident, theta, x, 99), 99, bins=10, level=1e-4).passed


def test_prior_only_simulator_returns_prior_on_a_box():
    torch.set_default_dtype(torch.float32)
    prior = box_uniform([-1.0, 0.0], [2.0, 3.0])
    theta, x = simulate(prior, lambda t: torch.randn(t.shape[0], 3), 4000, seed=41)
    torch.manual_seed(42)
    npe = NPE(prior, (3,), flow="nsf", transforms=2, hidden=(32, 32), bins=8)
    npe.fit(theta, x, batch_size=400, lr=3e-3, max_epochs=120, patience=10, seed=43)
    x_o = torch.randn(4, 3)
    q = npe.posterior(x_o)
    samples = q.sample((4000,))
    low, high = prior.base_dist.low, prior.base_dist.high
    assert bool(((samples > low) & (samples < high)).all()), "every sample lies inside the box"
    est, upper = _kl_upper(q, prior.expand((4,)), n=16000)
    assert bool((upper < KL_SMALL).all()), f"KL(q || prior) estimates {est.tolist()}"
    # Density check at prior draws: log q is log(1/9) up to the same tolerance on average.
    grid = prior.sample((2000,))
    gap = (npe.posterior(x_o[:1]).log_prob(grid) - prior.log_prob(grid)).detach()
    assert abs(float(gap.mean())) < 2 * KL_SMALL + Z * float(gap.std()) / math.sqrt(2000)


@pytest.mark.slow
def test_sequential_npe_focuses_on_observation():
    """Two rounds of APT at x_o: the focused posterior matches the exact one (KL small)."""
    torch.set_default_dtype(torch.float32)
    prior = MultivariateNormal(torch.zeros(D), torch.eye(D))
    x_o = torch.tensor([1.0, -0.5])
    torch.manual_seed(51)
    npe = NPE(prior, (D,), transforms=2, hidden=(32, 32))
    histories = sequential_npe(
        npe,
        _simulator,
        x_o,
        rounds=2,
        simulations_per_round=1000,
        seed=52,
        batch_size=200,
        lr=2e-3,
        max_epochs=100,
        patience=10,
    )
    assert len(histories) == 2
    est, upper = _kl_upper(npe.posterior(x_o[None]), _exact(x_o[None]))
    assert float(upper[0]) < KL_SMALL, f"KL {est.tolist()}"
