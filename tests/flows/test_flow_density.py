"""Every 2-D flow is a normalized density, checked by importance sampling both ways.

* ``log_prob`` (the inverse direction): ``E_r[q(x) / r(x)] = 1`` under a wide reference ``r``.
* ``rsample_and_log_prob`` (the sampling direction): ``E_q[r(z) / q(z)] = 1`` under a
  narrow normalized ``r``, so a wrong ``ladj`` in the forward pass is caught even for
  transforms whose inverse is iterative.

References are chosen so the weights have small variance: for the real-valued flows,
Gaussians with q's mean and covariance from a pilot draw, scaled 1.5 times wider
(first check) and 0.6 times narrower (second check); for the positive and
unit-interval flows (base ``N(0, I)``), the push-forwards of ``N(0, 1.5^2 I)`` and
``N(0, 0.6^2 I)`` through torch's own softplus and sigmoid transforms.  Each assertion
compares the mean with 1 within ``Z`` standard errors estimated from the same draws,
and also asserts the standard error is below 0.01, so a normalization off by 5 %
(``Z * 0.01 = 0.052``) cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from flow_cases import NAMES, make
from torch.distributions import Independent, MultivariateNormal, Normal, TransformedDistribution
from torch.distributions.transforms import SigmoidTransform, SoftplusTransform

from vitorch.families.flow import Flow
from vitorch.families.gaussian import DiagNormal

from conftest import Z

N = 50_000
SE_MAX = 0.01


def _reference(name: str, q: Flow, inflate: float):
    """A normalized reference: q's moment-matched Gaussian with its scale times ``inflate``
    (moments from an independent pilot draw), or for the constrained flows the
    push-forward of ``N(0, inflate^2 I)`` through torch's own transform."""
    if name in ("softplus", "sigmoid"):
        gauss = Independent(Normal(torch.zeros(2), inflate * torch.ones(2)), 1)
        return TransformedDistribution(gauss, [SoftplusTransform() if name == "softplus" else SigmoidTransform()])
    pilot = q.sample((N,))
    return MultivariateNormal(pilot.mean(0), inflate**2 * torch.cov(pilot.T))


def _flow(name: str) -> Flow:
    return Flow(DiagNormal(torch.zeros(2), torch.ones(2)), [make(name, 2, spread=0.1)])


def _check_mean_is_one(log_ratio: torch.Tensor) -> None:
    ratio = log_ratio.exp()
    mean, se = ratio.mean(), ratio.std() / ratio.numel() ** 0.5
    assert se < SE_MAX, f"test lacks power: standard error {se:.4f}"
    assert abs(mean - 1) <= Z * se, f"integral {mean:.4f} +- {se:.4f}"


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_integrates_to_one(name):
    q = _flow(name)
    r = _reference(name, q, 1.5)
    with torch.no_grad():
        x = r.sample((N,))
        _check_mean_is_one(q.log_prob(x) - r.log_prob(x))


@pytest.mark.parametrize("name", NAMES)
def test_sampling_density_integrates_to_one(name):
    q = _flow(name)
    r = _reference(name, q, 0.6)
    with torch.no_grad():
        z, log_q = q.rsample_and_log_prob((N,))
        _check_mean_is_one(r.log_prob(z) - log_q)
