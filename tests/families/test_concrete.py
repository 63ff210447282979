"""Concrete / Gumbel-softmax families against closed forms, torch, and the categorical law.

Oracles: the Concrete density written out as a product (Maddison et al., 2017, eq. 9),
torch's RelaxedOneHotCategorical / RelaxedBernoulli, quadrature of the density over the
simplex (it must integrate to one), and the Gumbel-max law of the argmax (chi-square).
Each stochastic assertion fails falsely with probability <= 2e-7 (tests/conftest.py, Z = 5.2).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from vitorch.families.concrete import (
    RelaxedBernoulli,
    RelaxedBernoulliStraightThrough,
    RelaxedOneHotCategorical,
    RelaxedOneHotCategoricalStraightThrough,
)
from vitorch.testing import check_family

P_FAIL = 2e-7  # per stochastic assertion (TESTING.md budget, z = 5.2 two-sided)
CATEGORICAL = (RelaxedOneHotCategorical, RelaxedOneHotCategoricalStraightThrough)
BINARY = (RelaxedBernoulli, RelaxedBernoulliStraightThrough)


@pytest.mark.parametrize("cls", CATEGORICAL + BINARY)
def test_check_family(cls):
    categorical = cls in CATEGORICAL

    def make():
        logits = torch.randn((2, 4) if categorical else (2,), requires_grad=True)
        temperature = (0.4 + torch.rand(2)).requires_grad_(True)
        return cls(temperature, logits=logits), [logits, temperature]

    results = check_family(make)
    failed = {k: v for k, v in results.items() if v != "passed" and not v.startswith("skipped")}
    assert not failed
    # The straight-through values are exactly categorical, so their mean is checked.
    assert results["mean[float64]"] == (
        "skipped: " + cls.__name__ + " has no closed-form mean"
        if cls
        in (
            RelaxedOneHotCategorical,
            RelaxedBernoulli,
        )
        else "passed"
    )


def concrete_density_product(probs, lam, x):
    """Maddison et al. (2017), eq. 9, as a product of powers (no logs), float64."""
    k = x.shape[-1]
    num = math.factorial(k - 1) * lam ** (k - 1) * (probs * x ** (-lam - 1)).prod(-1)
    return num / (probs * x ** (-lam)).sum(-1) ** k


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0, 3.0])
def test_categorical_density_closed_form_and_torch(lam):
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.4, 0.4, 0.2]])
    q = RelaxedOneHotCategorical(lam, probs=probs)
    # Points on the simplex including near-vertex ones (edge values of the density).
    x = torch.tensor([[0.2, 0.3, 0.5], [1e-6, 0.5, 0.5 - 1e-6], [0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3]])
    x = x.unsqueeze(1).expand(4, 2, 3)
    expected = concrete_density_product(probs, lam, x).log()
    torch.testing.assert_close(q.log_prob(x), expected, rtol=1e-10, atol=1e-10)
    ref = torch.distributions.RelaxedOneHotCategorical(torch.tensor(lam), probs=probs)
    torch.testing.assert_close(q.log_prob(x), ref.log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lam", [0.2, 1.0, 2.5])
def test_binary_density_closed_form_and_torch(lam):
    logits = torch.tensor([-2.0, 0.0, 1.5])
    q = RelaxedBernoulli(lam, logits=logits)
    x = torch.tensor([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6]).unsqueeze(-1).expand(5, 3)
    a = logits.exp()
    dens = lam * a * x ** (-lam - 1) * (1 - x) ** (-lam - 1) / (a * x ** (-lam) + (1 - x) ** (-lam)) ** 2
    torch.testing.assert_close(q.log_prob(x), dens.log(), rtol=1e-10, atol=1e-10)
    ref = torch.distributions.RelaxedBernoulli(torch.tensor(lam), logits=logits)
    torch.testing.assert_close(q.log_prob(x), ref.log_prob(x), rtol=1e-9, atol=1e-9)
    # The binary Concrete is the K = 2 Concrete seen through its first coordinate.
    cat = RelaxedOneHotCategorical(lam, logits=torch.stack([logits, torch.zeros(3)], -1))
    torch.testing.assert_close(q.log_prob(x), cat.log_prob(torch.stack([x, 1 - x], -1)), rtol=1e-9, atol=1e-9)


def test_categorical_density_integrates_to_one_on_the_triangle():
    # Midpoint rule on (x1, x2) with x3 = 1 - x1 - x2, cells inside the triangle.  At
    # lambda = 1 the density is bounded and smooth, so the rule's error is O(h^2) plus the
    # boundary cells' O(h); 2000^2 cells keep it below 2e-3 (a wrong (K-1)! or lambda^(K-1)
    # is off by a factor of 2 or more).
    q = RelaxedOneHotCategorical(1.0, probs=torch.tensor([0.2, 0.3, 0.5]))
    n = 2000
    h = 1.0 / n
    g = (torch.arange(n) + 0.5) * h
    x1, x2 = torch.meshgrid(g, g, indexing="ij")
    inside = x1 + x2 < 1 - h
    pts = torch.stack([x1[inside], x2[inside], 1 - x1[inside] - x2[inside]], -1)
    q._validate_args = False
    total = q.log_prob(pts).exp().sum() * h * h
    assert abs(total.item() - 1) < 2e-3


@pytest.mark.parametrize("lam", [0.3, 2.0])
def test_binary_density_integrates_to_one(lam):
    # Substitute x = sigmoid(t): the integrand p(x) x (1 - x) is smooth and decays like
    # exp(-lam |t|), so the trapezoid rule on [-80/lam, 0] is exact to rounding.  x > 1/2 is
    # not representable near 1, so that half is integrated as the mirror image: the binary
    # Concrete with logit l at x is the one with logit -l at 1 - x.
    t = torch.linspace(-80 / lam, 0, 100_001)
    x = torch.sigmoid(t)
    jac = torch.nn.functional.logsigmoid(t) + torch.nn.functional.logsigmoid(-t)
    total = 0.0
    for logit in (0.8, -0.8):
        q = RelaxedBernoulli(lam, logits=torch.tensor(logit))
        total += torch.trapezoid((q.log_prob(x) + jac).exp(), t).item()
    assert abs(total - 1) < 1e-6


def chi_square_p(counts, probs):
    n = counts.sum()
    return stats.chisquare(counts.numpy(), (n * probs).numpy()).pvalue


@pytest.mark.parametrize("lam", [0.1, 1.0, 5.0])
def test_argmax_is_categorical(lam):
    # Gumbel-max: argmax x = argmax (log pi + G) for every temperature.  Chi-square with K-1
    # dof on n = 50,000 draws, rejected at p < 2e-7.  Power: a shift of 0.01 in one
    # probability of 0.3 moves the statistic by about n 0.01^2 / 0.3 = 17 on average, which
    # a test at this level detects with probability about 0.5 (it needs ~35); 0.02 gives ~67,
    # detected almost surely.
    probs = torch.tensor([0.05, 0.15, 0.3, 0.5])
    n = 50_000
    x = RelaxedOneHotCategorical(lam, probs=probs).sample((n,))
    counts = torch.bincount(x.argmax(-1), minlength=4).double()
    assert chi_square_p(counts, probs) > P_FAIL
    # The straight-through value is that one-hot, with the same law.
    h = RelaxedOneHotCategoricalStraightThrough(lam, probs=probs).sample((n,))
    assert chi_square_p(h.sum(0), probs) > P_FAIL


def test_binary_threshold_is_bernoulli():
    # P(x > 1/2) = sigmoid(logit): binomial test two-sided at 2e-7 on n = 50,000.
    p = torch.tensor([0.1, 0.5, 0.85])
    n = 50_000
    x = RelaxedBernoulli(0.3, probs=p).sample((n,))
    for j in range(3):
        k = int((x[:, j] > 0.5).sum())
        assert stats.binomtest(k, n, float(p[j])).pvalue > P_FAIL


def test_relaxed_mean_tends_to_probs_at_low_temperature():
    # At lambda -> 0 the Concrete concentrates on vertices with the categorical's law, so its
    # mean is probs; at lambda = 0.05 the draws lie within ~1e-6 of a vertex except with tiny
    # probability.  Each coordinate is within 5.2 standard errors (se <= sqrt(p(1-p)/n)).
    probs = torch.tensor([0.2, 0.3, 0.5])
    n = 20_000
    x = RelaxedOneHotCategorical(0.05, probs=probs).sample((n,))
    se = (probs * (1 - probs) / n).sqrt()
    assert ((x.mean(0) - probs).abs() <= 5.2 * se + 1e-3).all()


def test_straight_through_forward_is_one_hot_and_gradient_is_relaxed():
    logits = torch.randn(3, 5, requires_grad=True)
    temperature = torch.tensor(0.7, requires_grad=True)
    c = torch.randn(4, 3, 5)
    torch.manual_seed(11)
    h = RelaxedOneHotCategoricalStraightThrough(temperature, logits=logits).rsample((4,))
    torch.manual_seed(11)
    x = RelaxedOneHotCategorical(temperature, logits=logits).rsample((4,))
    # Forward: exactly one-hot, at the relaxed sample's argmax.
    assert set(h.detach().unique().tolist()) <= {0.0, 1.0}
    assert (h.detach().sum(-1) == 1).all()
    assert torch.equal(h.detach().argmax(-1), x.detach().argmax(-1))
    # Backward: the relaxed sample's gradient, for logits and temperature.
    g_h = torch.autograd.grad((c * h).sum(), [logits, temperature])
    g_x = torch.autograd.grad((c * x).sum(), [logits, temperature])
    for a, b in zip(g_h, g_x):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert (a != 0).any()


def test_binary_straight_through_forward_and_gradient():
    logits = torch.randn(6, requires_grad=True)
    c = torch.randn(3, 6)
    torch.manual_seed(5)
    h = RelaxedBernoulliStraightThrough(0.5, logits=logits).rsample((3,))
    torch.manual_seed(5)
    x = RelaxedBernoulli(0.5, logits=logits).rsample((3,))
    assert torch.equal(h.detach(), (x.detach() > 0.5).double())
    (g_h,) = torch.autograd.grad((c * h).sum(), logits)
    (g_x,) = torch.autograd.grad((c * x).sum(), logits)
    torch.testing.assert_close(g_h, g_x)


def test_straight_through_log_prob_is_the_categorical_pmf_and_kl():
    probs = torch.tensor([0.1, 0.6, 0.3])
    q = RelaxedOneHotCategoricalStraightThrough(0.5, probs=probs)
    onehots = torch.eye(3)
    torch.testing.assert_close(q.log_prob(onehots), probs.log())
    prior = torch.distributions.OneHotCategorical(probs=torch.full((3,), 1 / 3))
    kl = torch.distributions.kl_divergence(q, prior)
    torch.testing.assert_close(kl, (probs * (probs.log() - math.log(1 / 3))).sum())
    qb = RelaxedBernoulliStraightThrough(0.5, probs=torch.tensor([0.25]))
    torch.testing.assert_close(qb.log_prob(torch.tensor([[1.0], [0.0]])), torch.tensor([[0.25], [0.75]]).log())


def test_torch_like_arguments_and_batching():
    # probs and logits give the same family; temperature broadcasts against the batch.
    logits = torch.randn(2, 3, 4)
    a = RelaxedOneHotCategorical(torch.tensor([0.5, 1.0, 2.0]), logits=logits)
    b = RelaxedOneHotCategorical(torch.tensor([0.5, 1.0, 2.0]), probs=logits.softmax(-1))
    assert a.batch_shape == (2, 3) and a.event_shape == (4,)
    x = a.sample((7,))
    assert x.shape == (7, 2, 3, 4)
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x))
    torch.testing.assert_close(a.probs, logits.softmax(-1))


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        RelaxedOneHotCategorical(0.0, probs=torch.tensor([0.5, 0.5]), validate_args=True)
    with pytest.raises(ValueError, match="probs"):
        RelaxedOneHotCategorical(1.0, probs=torch.tensor([0.5, 0.6]), validate_args=True)
    with pytest.raises(ValueError, match="logits"):
        RelaxedOneHotCategorical(1.0, logits=torch.tensor([0.0, float("nan")]), validate_args=True)
    with pytest.raises(ValueError, match="exactly one of probs and logits"):
        RelaxedOneHotCategorical(1.0, probs=torch.tensor([0.5, 0.5]), logits=torch.zeros(2))
    with pytest.raises(ValueError, match="does not broadcast"):
        RelaxedOneHotCategorical(torch.ones(3), logits=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="logits"):
        RelaxedOneHotCategorical(1.0, logits=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="probs"):
        RelaxedBernoulli(1.0, probs=torch.tensor([1.5]), validate_args=True)
    q = RelaxedOneHotCategorical(1.0, probs=torch.tensor([0.5, 0.5]), validate_args=True)
    with pytest.raises(ValueError, match="support"):
        q.log_prob(torch.tensor([0.7, 0.7]))
    st = RelaxedOneHotCategoricalStraightThrough(1.0, probs=torch.tensor([0.5, 0.5]), validate_args=True)
    with pytest.raises(ValueError, match="support"):
        st.log_prob(torch.tensor([0.5, 0.5]))
    # validate_args=False skips the checks.
    RelaxedOneHotCategorical(1.0, probs=torch.tensor([0.5, 0.6]), validate_args=False)
