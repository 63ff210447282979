"""Evidences through the model layer: any Jacobian error shows up as a wrong log Z.

Each test estimates ``log Z`` of ``model.log_density`` with IWAE at K = 10^4
(``vt.loss(..., objective=iwae)``), the proposal a multivariate Student-t (5 degrees of
freedom) at the Laplace approximation, its scale 1.5 times Laplace's: its polynomial tails bound the importance
weights of these exponentially-tailed targets, so the delta-method standard error
``se = sd(w) / (sqrt(K) mean(w))`` from the draws is valid.  Each assertion is
``|log Z_hat - log Z| <= 5.2 se`` (false-failure rate about 2e-7 per assertion;
TESTING.md's budget), and ``se < 0.03`` so that a Jacobian error of 0.16 nat or more
cannot pass (most cases have se near 0.005-0.01, so there the bar is about 0.05 nat).
IWAE's bias, about ``-se^2 / 2``, is below 5e-4 here and is ignored.

References: Burda et al. (2016) for IWAE; Lewandowski, Kurowicka & Joe (2009) for the
LKJ normalizer.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_cases import PRIOR_CASES, StudentT, iwae_log_z
from torch.distributions import (
    Beta,
    Binomial,
    Dirichlet,
    Gamma,
    InverseGamma,
    Multinomial,
    Normal,
    Poisson,
    constraints,
)

import vitorch as vt
from vitorch.model import AutoLaplace, Model, Site

from conftest import Z

K = 10_000
SE_MAX = 0.03


def _log_z(model: Model) -> tuple[float, float]:
    laplace = AutoLaplace(model)()
    q = StudentT(laplace.loc, 1.5 * laplace.scale_tril, df=5.0)
    with torch.no_grad():
        out = vt.loss(model.log_density, q, K, vt.objectives.iwae)
    return iwae_log_z(out.log_w)


def _assert_log_z(model: Model, expected: float) -> None:
    estimate, se = _log_z(model)
    assert se < SE_MAX, f"proposal too poor for a powerful test: se = {se:.3g}"
    assert abs(estimate - expected) <= Z * se, f"log Z {estimate:.5f} vs {expected:.5f} (se {se:.2g})"


@pytest.mark.parametrize("name", sorted(PRIOR_CASES))
def test_prior_only_model_has_log_z_zero(name):
    site, log_prior = PRIOR_CASES[name]
    _assert_log_z(Model(lambda p: log_prior(p["x"]), {"x": site}), 0.0)


def test_beta_binomial_evidence():
    a, b, n, y = 2.0, 3.0, 20, 13.0
    model = Model(
        lambda p: Beta(a, b).log_prob(p["p"]) + Binomial(n, p["p"]).log_prob(torch.tensor(y)),
        {"p": Site(constraint=constraints.unit_interval)},
    )
    log_beta = lambda x, z: math.lgamma(x) + math.lgamma(z) - math.lgamma(x + z)  # noqa: E731
    log_choose = math.lgamma(n + 1) - math.lgamma(y + 1) - math.lgamma(n - y + 1)
    _assert_log_z(model, log_choose + log_beta(a + y, b + n - y) - log_beta(a, b))


def test_gamma_poisson_evidence():
    alpha, beta = 3.0, 0.5
    y = torch.tensor([4.0, 7.0, 3.0, 6.0, 5.0])
    model = Model(
        lambda p: Gamma(alpha, beta).log_prob(p["rate"]) + Poisson(p["rate"].unsqueeze(-1)).log_prob(y).sum(-1),
        {"rate": Site(constraint=constraints.positive)},
    )
    s, n = y.sum().item(), len(y)
    expected = (
        -torch.lgamma(y + 1).sum().item()
        + alpha * math.log(beta)
        - math.lgamma(alpha)
        + math.lgamma(alpha + s)
        - (alpha + s) * math.log(beta + n)
    )
    _assert_log_z(model, expected)


def test_dirichlet_multinomial_evidence():
    alpha = torch.tensor([1.5, 2.0, 3.0, 1.0])
    x = torch.tensor([5.0, 2.0, 8.0, 1.0])
    n = int(x.sum())
    model = Model(
        lambda p: Dirichlet(alpha).log_prob(p["w"]) + Multinomial(n, p["w"]).log_prob(x),
        {"w": Site(shape=(4,), constraint=constraints.simplex)},
    )
    expected = (
        math.lgamma(n + 1)
        - torch.lgamma(x + 1).sum().item()
        + math.lgamma(alpha.sum().item())
        - math.lgamma(alpha.sum().item() + n)
        + (torch.lgamma(alpha + x) - torch.lgamma(alpha)).sum().item()
    )
    _assert_log_z(model, expected)


def test_normal_inverse_gamma_evidence():
    m0, kappa0, a, b = 1.0, 2.0, 3.0, 2.0
    y = torch.tensor([0.3, 1.9, 1.2, 2.4, 0.8, 1.5])

    def log_joint(p):
        var = p["var"]
        prior = InverseGamma(a, b).log_prob(var) + Normal(m0, (var / kappa0).sqrt()).log_prob(p["mu"])
        return prior + Normal(p["mu"].unsqueeze(-1), var.sqrt().unsqueeze(-1)).log_prob(y).sum(-1)

    model = Model(log_joint, {"mu": Site(), "var": Site(constraint=constraints.positive)})
    n, ybar = len(y), y.mean().item()
    kappa_n, a_n = kappa0 + n, a + n / 2
    b_n = b + 0.5 * (y - ybar).pow(2).sum().item() + kappa0 * n * (ybar - m0) ** 2 / (2 * kappa_n)
    expected = (
        -0.5 * n * math.log(2 * math.pi)
        + 0.5 * math.log(kappa0 / kappa_n)
        + a * math.log(b)
        - a_n * math.log(b_n)
        + math.lgamma(a_n)
        - math.lgamma(a)
    )
    _assert_log_z(model, expected)


def _log_lkj_normalizer(d: int, eta: float) -> float:
    """log of ``c_d = int det(R)^(eta - 1) dR`` (Lewandowski, Kurowicka & Joe, 2009, eq. 16)."""
    power = sum((2 * eta - 2 + d - k) * (d - k) for k in range(1, d))
    log_beta = lambda x: 2 * math.lgamma(x) - math.lgamma(2 * x)  # noqa: E731  (B(x, x))
    return power * math.log(2) + sum((d - k) * log_beta(eta + (d - k - 1) / 2) for k in range(1, d))


@pytest.mark.parametrize("d, eta", [(2, 1.0), (3, 2.0), (4, 1.5)])
def test_lkj_normalizer(d, eta):
    # Unnormalized LKJ on the Cholesky factor: det(R)^(eta - 1) |dR/dL| = prod_{i>=2} L_ii^(d - i + 2 eta - 2).
    exponents = torch.tensor([d - i + 2 * eta - 2 for i in range(2, d + 1)])

    def log_joint(p):
        return (exponents * p["L"].diagonal(dim1=-2, dim2=-1)[..., 1:].log()).sum(-1)

    model = Model(log_joint, {"L": Site(shape=(d, d), constraint=constraints.corr_cholesky)})
    _assert_log_z(model, _log_lkj_normalizer(d, eta))
