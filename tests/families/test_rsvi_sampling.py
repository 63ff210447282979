"""Samplers of the Gamma, Beta and Dirichlet families (TESTING.md families 2 and 6).

Goodness of fit by the DKWM inequality ``P(sup |F_n - F| > eps) <= 2 exp(-2 N eps^2)``:
with ``N`` draws per case and a per-assertion false-failure rate ``ALPHA`` (two-sided
tail of ``Z`` standard errors), ``eps = sqrt(ln(2 / ALPHA) / (2 N))``.  The empirical
CDF is compared with scipy's on the 1%..99% quantiles that are representable, plus
at the smallest positive normal number, where draws that underflow are placed (so
the fraction there must match ``F(tiny)``).  Power: for N = 20,000, eps = 0.020,
so any CDF error above 0.04 at one of the quantiles is caught with probability
near one; forgetting the boost factor ``u^(1/alpha)`` moves the CDF by 0.2 or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from vitorch.families import _rsvi
from vitorch.families.beta import Beta, RSVIBeta
from vitorch.families.dirichlet import Dirichlet, RSVIDirichlet
from vitorch.families.gamma import Gamma, RSVIGamma
from vitorch.kernels.gamma import reference as mt

from conftest import Z

N = 20000
ALPHA = 2 * st.norm.sf(Z)
EPS = math.sqrt(math.log(2 / ALPHA) / (2 * N))
CONC = [1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 100.0, 1e4]
PROBS = np.linspace(0.01, 0.99, 99)


def _assert_dkwm(z: torch.Tensor, ref, upper: float = np.inf) -> None:
    """``z [N, C]`` draws against the frozen scipy law ``ref`` (parameters broadcast to ``[C]``)."""
    x = np.asarray(z.detach().double().numpy())
    tiny = float(torch.finfo(z.dtype).tiny)
    points = ref.ppf(PROBS[:, None])  # [99, C]
    usable = (points > tiny) & (points < upper)
    ecdf = (x[None, :, :] <= points[:, None, :]).mean(1)
    dev = np.where(usable, np.abs(ecdf - PROBS[:, None]), 0.0)
    assert dev.max() <= EPS, f"DKWM: max CDF deviation {dev.max():.4f} > eps {EPS:.4f} (column {dev.max(0).argmax()})"
    at_tiny = (x <= tiny).mean(0)
    assert np.abs(at_tiny - ref.cdf(tiny)).max() <= EPS


GAMMAS = {
    "implicit": lambda a, b: Gamma(a, b),
    "rsvi_B0": lambda a, b: RSVIGamma(a, b, boost=0),
    "rsvi_B1": lambda a, b: RSVIGamma(a, b, boost=1),
    "rsvi_B5": lambda a, b: RSVIGamma(a, b, boost=5),
}


@pytest.mark.parametrize("kind", list(GAMMAS))
def test_gamma_draws_fit_over_concentrations(kind):
    a = torch.tensor(CONC)
    b = torch.tensor(2.0)
    z = GAMMAS[kind](a, b).sample((N,))
    _assert_dkwm(z, st.gamma(np.array(CONC), scale=0.5))


@pytest.mark.parametrize("cls", [Beta, lambda a, b: RSVIBeta(a, b, boost=0)], ids=["implicit", "rsvi"])
def test_beta_draws_fit(cls):
    a = torch.tensor(CONC)
    b = torch.tensor(CONC[::-1])
    z = cls(a, b).sample((N,))
    _assert_dkwm(z, st.beta(np.array(CONC), np.array(CONC[::-1])), upper=1 - np.finfo(np.float64).eps)


@pytest.mark.parametrize("cls", [Dirichlet, lambda a: RSVIDirichlet(a, boost=1)], ids=["implicit", "rsvi"])
def test_dirichlet_marginals_fit(cls):
    # Component k of Dirichlet(alpha) is Beta(alpha_k, sum(alpha) - alpha_k).
    conc = torch.tensor([[c, 1.0, 2.5] for c in CONC])  # [C, 3]
    z = cls(conc).sample((N,))  # [N, C, 3]
    assert torch.allclose(z.sum(-1), torch.ones(()), atol=1e-12)
    rest = conc.sum(-1, keepdim=True) - conc
    for k in range(3):
        _assert_dkwm(z[..., k], st.beta(conc[:, k].numpy(), rest[:, k].numpy()), upper=1 - 1e-15)


@pytest.mark.parametrize("family", ["gamma", "beta", "dirichlet"])
def test_float32_tiny_concentration_is_finite_and_never_zero(family):
    a = torch.full((4,), 1e-3, dtype=torch.float32, requires_grad=True)
    one = torch.tensor(1.0, dtype=torch.float32)
    if family == "gamma":
        q = RSVIGamma(a, one)
    elif family == "beta":
        q = RSVIBeta(a, a.flip(0))
    else:
        q = RSVIDirichlet(a)
    z, log_q, log_corr = q.rsample_with_correction((N // 4,))
    assert z.dtype == torch.float32
    assert bool((z > 0).all()) and bool(torch.isfinite(z).all())
    assert bool(torch.isfinite(log_q).all()) and bool(torch.isfinite(log_corr).all())
    (z.sum() + log_q.sum() + log_corr.sum()).backward()
    assert bool(torch.isfinite(a.grad).all())
    if family == "gamma":
        # Over 90% of the mass lies below float32's smallest normal number: it must sit there, not at 0.
        ref = st.gamma(1e-3)
        eps = math.sqrt(math.log(2 / ALPHA) / (2 * z.shape[0]))
        for c in range(4):
            x = z[:, c].detach().double().numpy()
            assert abs((x <= float(torch.finfo(torch.float32).tiny)).mean() - ref.cdf(1.1754943508222875e-38)) <= eps


def test_acceptance_rate_matches_marsaglia_tsang_theory():
    a = torch.tensor([1.0, 1.5, 3.0, 10.0, 1e4])
    _, proposals = mt.marsaglia_tsang_eps(a.expand(N, 5))
    p = proposals.double()
    r = mt.acceptance_rate(a)
    # Proposals per draw are geometric with success r: mean 1/r, variance (1 - r)/r^2 under the theory.
    se = torch.sqrt((1 - r) / r**2 / N)
    assert bool(((p.mean(0) - 1 / r).abs() <= Z * se).all()), (p.mean(0), 1 / r)
    # The theory itself: r(1) = e^(2/3) / (sqrt(2 pi) (2/3)^(1/2)), and r -> 1.
    assert math.isclose(mt.acceptance_rate(torch.tensor(1.0)).item(), math.exp(2 / 3) / math.sqrt(2 * math.pi * 2 / 3))
    assert 0.999 < mt.acceptance_rate(torch.tensor(1e4)).item() <= 1.0


@pytest.mark.parametrize("a", [1.0, 1.7, 6.0, 250.0])
def test_acceptance_density_is_normalized_and_equals_proposal_times_acceptance(a):
    a = torch.tensor(a)
    c = 1 / math.sqrt(9 * a.item() - 3)
    eps = torch.linspace(-1 / c + 1e-9, 40.0, 400001)
    log_pi = mt.log_accept_density(eps, a)
    step = (eps[1] - eps[0]).item()
    # The Gaussian tails beyond 40 and the region 1 + c eps <= 0 carry no mass here.
    assert abs(torch.exp(log_pi).sum().item() * step - 1) < 1e-6
    # pi(eps) = N(eps; 0, 1) * P(accept | eps) / r(a)  (the definition of accepted noise).
    v = (1 + c * eps) ** 3
    d = a - 1 / 3
    log_accept = 0.5 * eps**2 + d - d * v + d * torch.log(v)
    alt = -0.5 * eps**2 - 0.5 * math.log(2 * math.pi) + log_accept - torch.log(mt.acceptance_rate(a))
    # Away from the edge 1 + c eps = 0, where both forms lose digits to the cube.
    mid = (eps.abs() < 8) & (1 + c * eps > 1e-2)
    assert torch.allclose(log_pi[mid], alt[mid], rtol=1e-9, atol=1e-9)


def test_boost_is_raised_to_one_below_concentration_one():
    alpha = torch.tensor([1e-3, 0.99, 1.0, 4.0])
    assert mt.effective_boost(alpha, 0).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert mt.effective_boost(alpha, 3).tolist() == [3.0, 3.0, 3.0, 3.0]
    # Each draw uses (alpha + B_eff) in the Marsaglia-Tsang step: check via the proposal count's mean.
    _, _, proposals = _rsvi.log_standard_gamma(torch.full((N,), 0.5), 0)
    r = mt.acceptance_rate(torch.tensor(1.5))
    assert abs(proposals.double().mean() - 1 / r) <= Z * torch.sqrt((1 - r) / r**2 / N)


@pytest.mark.parametrize("cls", [RSVIGamma, Gamma])
@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_unchecked_bad_concentration_gives_nan_instead_of_hanging(bad, cls):
    # With validate_args=False nothing rejects the parameter, and a rejection sampler that
    # never accepts would loop forever; the draw is NaN instead, next to good draws.
    q = cls(torch.tensor([bad, 2.0]), torch.tensor(1.0), validate_args=False)
    z = q.rsample((5,))
    assert bool(torch.isnan(z[:, 0]).all()) and bool(torch.isfinite(z[:, 1]).all())
    if cls is RSVIGamma:  # an infinite shape too (torch's own sampler returns inf there)
        assert bool(torch.isnan(cls(torch.tensor(float("inf")), 1.0, validate_args=False).rsample()))
