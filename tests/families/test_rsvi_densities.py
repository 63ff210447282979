"""Gamma, Beta and Dirichlet families (RSVI and implicit): densities, shapes and bad input.

TESTING.md families 1 (log_prob / entropy / mean / variance against ``scipy.stats``
over a parameter grid with edge values), 3 (shapes, ``expand``, ``detach``; broadcast
shapes generated with hypothesis, densities against ``torch.distributions``) and 19
(bad input raises ``ValueError`` naming the culprit; ``validate_args=False`` skips).
"""

from __future__ import annotations

import pytest
import scipy.stats as st
import torch
from hypothesis import given
from hypothesis import strategies as st_h
from torch.autograd import gradcheck

from vitorch.families.base import Family
from vitorch.families.beta import Beta, RSVIBeta
from vitorch.families.dirichlet import Dirichlet, RSVIDirichlet
from vitorch.families.gamma import Gamma, RSVIGamma
from vitorch.kernels.gamma import reference as mt

from conftest import Z

GRID = torch.tensor([1e-3, 0.1, 0.7, 1.0, 2.5, 40.0, 1e4], dtype=torch.float64)
RATES = torch.tensor([1e-2, 0.5, 1.0, 3.0, 1e2], dtype=torch.float64)

GAMMAS = [Gamma, lambda a, b, **kw: RSVIGamma(a, b, boost=1, **kw)]
BETAS = [Beta, lambda a, b, **kw: RSVIBeta(a, b, boost=1, **kw)]
DIRICHLETS = [Dirichlet, lambda a, **kw: RSVIDirichlet(a, boost=1, **kw)]


def _rel_close(x: torch.Tensor, y, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
    # Deterministic special-function values in float64: only rounding separates them.
    return torch.allclose(x, torch.as_tensor(y, dtype=x.dtype), rtol=rtol, atol=atol)


@pytest.mark.parametrize("make", GAMMAS, ids=["implicit", "rsvi"])
def test_gamma_density_and_moments_match_scipy(make):
    a, b = torch.meshgrid(GRID, RATES, indexing="ij")
    q = make(a, b)
    ref = st.gamma(a.numpy(), scale=1 / b.numpy())
    z = torch.tensor([1e-30, 1e-3, 0.3, 1.0, 7.0, 1e4]).reshape(-1, 1, 1)
    assert _rel_close(q.log_prob(z), ref.logpdf(z.numpy()))
    assert _rel_close(q.entropy(), ref.entropy(), rtol=1e-8)
    assert _rel_close(q.mean, ref.mean())
    assert _rel_close(q.variance, ref.var())
    assert _rel_close(q.cdf(z), ref.cdf(z.numpy()))


@pytest.mark.parametrize("make", BETAS, ids=["implicit", "rsvi"])
def test_beta_density_and_moments_match_scipy(make):
    a, b = torch.meshgrid(GRID, GRID, indexing="ij")
    q = make(a, b)
    ref = st.beta(a.numpy(), b.numpy())
    z = torch.tensor([1e-12, 0.01, 0.5, 0.9, 1 - 1e-9]).reshape(-1, 1, 1)
    assert _rel_close(q.log_prob(z), ref.logpdf(z.numpy()), rtol=1e-8)
    assert _rel_close(q.entropy(), ref.entropy(), rtol=1e-7, atol=1e-7)
    assert _rel_close(q.mean, ref.mean())
    assert _rel_close(q.variance, ref.var())


@pytest.mark.parametrize("make", DIRICHLETS, ids=["implicit", "rsvi"])
def test_dirichlet_density_and_moments_match_scipy(make):
    alphas = [GRID[[0, 3, 6]], GRID[[1, 2, 4, 5]], torch.tensor([1e-3, 1e-3]), torch.tensor([5.0, 1e4, 0.7])]
    for alpha in alphas:
        q = make(alpha)
        ref = st.dirichlet(alpha.numpy())
        z = torch.distributions.Dirichlet(alpha.clamp(min=0.5)).sample((4,))
        assert _rel_close(q.log_prob(z), [ref.logpdf(zi.numpy()) for zi in z], rtol=1e-8)
        assert _rel_close(q.entropy(), ref.entropy(), rtol=1e-7, atol=1e-7)
        assert _rel_close(q.mean, ref.mean())
        assert _rel_close(q.variance, ref.var())


ALL = [
    ("Gamma", lambda **kw: Gamma(torch.full((2, 3), 0.5), torch.tensor(2.0), **kw)),
    ("RSVIGamma", lambda **kw: RSVIGamma(torch.full((2, 3), 0.5), torch.tensor(2.0), boost=2, **kw)),
    ("Beta", lambda **kw: Beta(torch.full((2, 3), 0.5), torch.tensor(2.0), **kw)),
    ("RSVIBeta", lambda **kw: RSVIBeta(torch.full((2, 3), 0.5), torch.tensor(2.0), **kw)),
    ("Dirichlet", lambda **kw: Dirichlet(torch.full((2, 3, 4), 0.5), **kw)),
    ("RSVIDirichlet", lambda **kw: RSVIDirichlet(torch.full((2, 3, 4), 0.5), **kw)),
]


@pytest.mark.parametrize("name,make", ALL, ids=[n for n, _ in ALL])
def test_shapes_expand_detach(name, make):
    q = make()
    assert isinstance(q, Family) and q.has_rsample
    event = (4,) if "Dirichlet" in name else ()
    assert q.batch_shape == (2, 3) and q.event_shape == event
    z, log_q = q.rsample_and_log_prob((5,))
    assert z.shape == (5, 2, 3, *event) and log_q.shape == (5, 2, 3)
    assert torch.allclose(log_q, q.log_prob(z), rtol=1e-12, atol=1e-12)
    assert q.sample((7,)).shape == (7, 2, 3, *event) and q.rsample().shape == (2, 3, *event)
    big = q.expand((4, 2, 3))
    assert big.batch_shape == (4, 2, 3) and big.rsample((2,)).shape == (2, 4, 2, 3, *event)
    assert torch.allclose(big.entropy()[1], q.entropy())
    if name.startswith("RSVI"):
        z, log_q, log_corr = q.rsample_with_correction((5,))
        assert log_corr.shape == (5, 2, 3)
        assert big.boost == q.boost and big.has_correction is True


@pytest.mark.parametrize("name,make", ALL, ids=[n for n, _ in ALL])
def test_detach_stops_every_parameter(name, make):
    params = {k: v for k, v in vars(make()).items() if k.startswith("concentration") or k == "rate"}
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    cls = type(make())
    q = cls(**leaves)
    z = q.rsample((3,)).detach()
    assert q.log_prob(z).requires_grad
    assert not q.detach().log_prob(z).requires_grad
    assert not q.detach().rsample_and_log_prob((2,))[1].requires_grad


def test_correction_flag_and_boost_are_kept():
    q = RSVIGamma(torch.tensor(0.3), torch.tensor(1.0), boost=3, correction=False)
    assert q.has_correction is False and q.detach().has_correction is False and q.detach().boost == 3
    assert RSVIDirichlet(torch.ones(3)).has_correction is True
    assert RSVIBeta(1.0, 2.0, correction=False).expand((2,)).has_correction is False


BAD_PARAMS = [
    (lambda v: Gamma(v, 1.0), "concentration"),
    (lambda v: Gamma(1.0, v), "rate"),
    (lambda v: RSVIGamma(v, 1.0), "concentration"),
    (lambda v: RSVIGamma(1.0, v), "rate"),
    (lambda v: Beta(v, 1.0), "concentration1"),
    (lambda v: RSVIBeta(1.0, v), "concentration0"),
    (lambda v: Dirichlet(torch.stack([torch.tensor(1.0), v])), "concentration"),
    (lambda v: RSVIDirichlet(torch.stack([v, torch.tensor(1.0)])), "concentration"),
]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
@pytest.mark.parametrize("make,name", BAD_PARAMS)
def test_bad_parameters_raise_naming_the_parameter(make, name, bad):
    with pytest.raises(ValueError, match=rf"parameter {name} must satisfy"):
        make(torch.tensor(bad))


@pytest.mark.parametrize("cls", [Gamma, RSVIGamma, Beta, RSVIBeta])
def test_validate_args_false_skips_checks(cls):
    # A negative concentration and a value outside the support pass unchecked (no raise).
    q = cls(torch.tensor(-1.0), torch.tensor(1.0), validate_args=False)
    assert q.log_prob(torch.tensor(-2.0)).shape == ()
    q = Dirichlet(torch.tensor([-1.0, 2.0]), validate_args=False)
    assert q.log_prob(torch.tensor([0.9, 0.9])).shape == ()


@pytest.mark.parametrize("boost", [-1, 1.5, True, "2"])
@pytest.mark.parametrize("cls", ["gamma", "beta", "dirichlet"])
def test_bad_boost_raises(cls, boost):
    with pytest.raises(ValueError, match="boost must be an integer >= 0"):
        if cls == "gamma":
            RSVIGamma(1.0, 1.0, boost=boost)
        elif cls == "beta":
            RSVIBeta(1.0, 1.0, boost=boost)
        else:
            RSVIDirichlet(torch.ones(2), boost=boost)


def test_shapes_that_do_not_broadcast_raise_with_both_shapes():
    with pytest.raises(ValueError, match=r"concentration \(3,\), rate \(2,\)"):
        RSVIGamma(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match=r"concentration1 \(3,\), concentration0 \(4,\)"):
        Beta(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        Dirichlet(torch.tensor(1.0))


@pytest.mark.parametrize(
    "q,value",
    [
        (Gamma(1.0, 1.0), -0.5),
        (RSVIGamma(1.0, 1.0), float("nan")),
        (Beta(1.0, 1.0), 1.5),
        (RSVIBeta(1.0, 1.0), float("nan")),
        (Dirichlet(torch.ones(3)), [0.5, 0.6, 0.1]),
        (RSVIDirichlet(torch.ones(3)), [-0.1, 0.6, 0.5]),
    ],
)
def test_log_prob_outside_support_raises_naming_the_support(q, value):
    with pytest.raises(ValueError, match="support"):
        q.log_prob(torch.tensor(value))
    unchecked = q.expand(q.batch_shape)
    unchecked._validate_args = False
    assert unchecked.log_prob(torch.tensor(value)).shape == q.batch_shape


@pytest.mark.parametrize("name,make", ALL, ids=[n for n, _ in ALL])
def test_float32_parameters_give_float32_draws(name, make):
    q = make().expand((2, 3))
    params = {k: v.float() for k, v in vars(q).items() if k.startswith("concentration") or k == "rate"}
    z, log_q = type(q)(**params).rsample_and_log_prob((3,))
    assert z.dtype == log_q.dtype == torch.float32


@st_h.composite
def _shape_cases(draw):
    # Tensors come from a seed hypothesis chose, so that a failing example replays exactly.
    torch.manual_seed(draw(st_h.integers(0, 2**32 - 1)))
    batch = tuple(draw(st_h.lists(st_h.integers(1, 3), max_size=3)))

    def partner():
        k = draw(st_h.integers(0, len(batch)))
        return tuple(1 if draw(st_h.booleans()) else n for n in batch[len(batch) - k :])

    kind = draw(st_h.sampled_from(["Gamma", "RSVIGamma", "Beta", "RSVIBeta", "Dirichlet", "RSVIDirichlet"]))
    conc = lambda shape: torch.rand(shape) * 3 + 0.05  # noqa: E731
    if kind.endswith("Dirichlet"):
        k = draw(st_h.integers(1, 3))
        return kind, {"concentration": conc((*batch, k))}, batch
    names = ("concentration", "rate") if kind.endswith("Gamma") else ("concentration1", "concentration0")
    p = {n: conc(partner()) for n in names}
    return kind, p, torch.broadcast_shapes(*(t.shape for t in p.values()))


@given(case=_shape_cases(), sample_shape=st_h.sampled_from([(), (2,), (3, 2)]))
def test_shape_algebra_and_log_prob_against_torch(case, sample_shape):
    kind, p, batch = case
    cls = {c.__name__: c for c in (Gamma, RSVIGamma, Beta, RSVIBeta, Dirichlet, RSVIDirichlet)}[kind]
    q = cls(**p)
    ref = getattr(torch.distributions, kind.removeprefix("RSVI"))(**p)
    event = ref.event_shape
    assert q.batch_shape == ref.batch_shape == batch and q.event_shape == event
    z, log_q = q.rsample_and_log_prob(sample_shape)
    assert z.shape == (*sample_shape, *batch, *event) and log_q.shape == (*sample_shape, *batch)
    # The same densities as torch's own distributions (float64 round-off).
    assert torch.allclose(log_q, ref.log_prob(z), rtol=1e-10, atol=1e-10)
    assert torch.allclose(q.entropy(), ref.entropy(), rtol=1e-10, atol=1e-10)
    if hasattr(q, "rsample_with_correction"):
        assert q.rsample_with_correction(sample_shape)[2].shape == (*sample_shape, *batch)
    # A value with fewer (broadcast) dimensions than the batch.
    assert q.log_prob(z[(0,) * (len(sample_shape) + len(batch))]).shape == batch


KL_CASES = [
    (lambda a, b: Gamma(a, b), lambda a, b: RSVIGamma(b, a), torch.distributions.Gamma),
    (lambda a, b: Beta(a, b), lambda a, b: RSVIBeta(b, a), torch.distributions.Beta),
    (
        lambda a, b: Dirichlet(torch.stack([a, b, torch.ones_like(a)], -1)),
        lambda a, b: RSVIDirichlet(torch.stack([b, a, 2 * torch.ones_like(a)], -1)),
        torch.distributions.Dirichlet,
    ),
]


@pytest.mark.parametrize("make_q,make_p,torch_cls", KL_CASES, ids=["gamma", "beta", "dirichlet"])
def test_closed_form_kl_matches_torch_and_monte_carlo(make_q, make_p, torch_cls):
    # TESTING.md family 13.  Against torch's own closed form (independent code) for every
    # mix of vitorch and torch on the two sides, and against a Monte Carlo average of
    # log q - log p within Z standard errors.
    a = torch.tensor([1e-3, 0.4, 2.0, 60.0, 1e4])
    b = torch.tensor([0.5, 3.0, 2.0, 1e3, 20.0])
    q, p = make_q(a, b), make_p(a, b)
    args = lambda d: [v for k, v in vars(d).items() if k.startswith(("conc", "rate"))]  # noqa: E731
    tq, tp = torch_cls(*args(q)), torch_cls(*args(p))
    expected = torch.distributions.kl_divergence(tq, tp)
    for lhs, rhs in ((q, p), (q, tp), (tq, p)):
        assert torch.allclose(torch.distributions.kl_divergence(lhs, rhs), expected, rtol=1e-10, atol=1e-12)
    # Monte Carlo on the well-conditioned middle entries (the extreme ones have heavy tails).
    mid = slice(1, 4)
    n = 20000
    qm = make_q(a[mid], b[mid])
    pm = make_p(a[mid], b[mid])
    z = qm.sample((n,))
    diff = qm.log_prob(z) - pm.log_prob(z)
    se = diff.std(0) / n**0.5
    assert bool(((diff.mean(0) - expected[mid]).abs() <= Z * se).all())


def test_gradcheck_densities_entropies_kl_and_acceptance_density():
    # TESTING.md family 4: float64 finite differences of every differentiable formula.
    a = (torch.rand(3) * 3 + 0.2).requires_grad_()
    b = (torch.rand(3) * 3 + 0.2).requires_grad_()
    x = (torch.rand(3) * 0.8 + 0.1).requires_grad_()
    simplex = torch.distributions.Dirichlet(torch.ones(3)).sample((2,)).requires_grad_()
    for cls in (Gamma, RSVIGamma, Beta, RSVIBeta):
        assert gradcheck(lambda a, b, x, cls=cls: cls(a, b, validate_args=False).log_prob(x), (a, b, x))
        assert gradcheck(lambda a, b, cls=cls: cls(a, b).entropy(), (a, b))
        assert gradcheck(lambda a, b, cls=cls: torch.distributions.kl_divergence(cls(a, b), cls(b, a)), (a, b))
    for cls in (Dirichlet, RSVIDirichlet):
        assert gradcheck(lambda c, z, cls=cls: cls(c, validate_args=False).log_prob(z), (a, simplex))
        assert gradcheck(lambda c, cls=cls: cls(c).entropy(), (a,))
        assert gradcheck(lambda c, d, cls=cls: torch.distributions.kl_divergence(cls(c), cls(d)), (a, b))
    eps = torch.randn(3) * 0.5
    assert gradcheck(lambda s: mt.log_accept_density(eps, s), (a + 1.0,))
    assert gradcheck(lambda s: mt.log_h(eps, s), (a + 1.0,))
