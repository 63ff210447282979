"""Sites: every constraint's map lands in its support, inverts, and reports the log-Jacobian that
autograd's Jacobian of the map onto the value's free coordinates gives (deterministic checks)."""

from __future__ import annotations

import pytest
import torch
from model_cases import PRIOR_CASES, free_coordinates
from torch.distributions import ExpTransform, constraints

from vitorch.model import Site, bijection_for, ordered_vector


@pytest.mark.parametrize("name", sorted(PRIOR_CASES))
def test_map_lands_in_support_and_inverts(name):
    site, _ = PRIOR_CASES[name]
    u = 1.5 * torch.randn(7, *site.unconstrained_shape)
    x, ladj = site.bijection.forward_and_ladj(u)
    assert x.shape == (7, *site.shape)
    assert torch.as_tensor(ladj).expand(7).shape == (7,)
    assert bool(torch.as_tensor(site.constraint.check(x)).all())
    torch.testing.assert_close(site.bijection.inverse(x), u, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", sorted(PRIOR_CASES))
def test_log_jacobian_equals_autograd_slogdet(name):
    site, _ = PRIOR_CASES[name]
    for _ in range(3):
        u = torch.randn(site.size)

        def f(flat):
            x, _ = site.bijection.forward_and_ladj(flat.reshape(site.unconstrained_shape))
            return free_coordinates(name, x)

        J = torch.autograd.functional.jacobian(f, u)
        assert J.shape == (site.size, site.size)
        _, expected = torch.linalg.slogdet(J)
        _, ladj = site.bijection.forward_and_ladj(u.reshape(site.unconstrained_shape))
        torch.testing.assert_close(torch.as_tensor(ladj, dtype=u.dtype), expected, rtol=1e-9, atol=1e-9)


def test_canonical_points():
    assert Site(constraint=constraints.positive).init_unconstrained(torch.float64).tolist() == [0.0]
    cases = {
        "positive": 1.0,
        "greater_than": 2.5,
        "less_than": -2.0,
        "interval": 1.0,
    }
    for name, expected in cases.items():
        site, _ = PRIOR_CASES[name]
        x, _ = site.bijection.forward_and_ladj(torch.zeros(site.unconstrained_shape))
        assert x.item() == pytest.approx(expected)
    site, _ = PRIOR_CASES["simplex"]
    x, _ = site.bijection.forward_and_ladj(torch.zeros(site.unconstrained_shape))
    torch.testing.assert_close(x, torch.full((3,), 1 / 3))
    for name in ("corr_cholesky", "lower_cholesky", "positive_definite"):
        site, _ = PRIOR_CASES[name]
        x, _ = site.bijection.forward_and_ladj(torch.zeros(site.unconstrained_shape))
        torch.testing.assert_close(x, torch.eye(site.shape[-1]))


def test_batched_matrix_sites():
    site = Site(shape=(4, 3, 3), constraint=constraints.positive_definite)
    assert site.unconstrained_shape == (4, 6)
    x, ladj = site.bijection.forward_and_ladj(torch.randn(5, 4, 6))
    assert x.shape == (5, 4, 3, 3) and ladj.shape == (5,)
    site = Site(shape=(2, 4), constraint=ordered_vector)
    x, ladj = site.bijection.forward_and_ladj(torch.randn(5, 2, 4))
    assert x.shape == (5, 2, 4) and ladj.shape == (5,) and bool((x.diff(dim=-1) > 0).all())


def test_tensor_bounds_follow_the_dtype():
    lower = torch.tensor([0.0, 1.0, 2.0])
    site = Site(shape=(3,), constraint=constraints.interval(lower, lower + 1))
    x, ladj = site.bijection.forward_and_ladj(torch.zeros(2, 3, dtype=torch.float32))
    assert x.dtype == torch.float32 and ladj.dtype == torch.float32
    torch.testing.assert_close(x[0], lower.float() + 0.5)


def test_user_init_is_the_start():
    site = Site(constraint=constraints.positive, init=2.0)
    torch.testing.assert_close(site.init_unconstrained(torch.float64), torch.tensor([2.0]).log())
    site = Site(shape=(3,), constraint=constraints.simplex, init=torch.tensor([0.2, 0.3, 0.5]))
    x, _ = site.bijection.forward_and_ladj(site.init_unconstrained(torch.float64))
    torch.testing.assert_close(x, torch.tensor([0.2, 0.3, 0.5]))


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: Site(shape="3"), TypeError, "shape"),
        (lambda: Site(shape=(2.0,)), TypeError, "ints"),
        (lambda: Site(shape=(0,)), ValueError, "positive sizes"),
        (lambda: Site(constraint="positive"), TypeError, "Constraint"),
        (lambda: Site(constraint=constraints.simplex), ValueError, "dimension"),
        (lambda: Site(shape=(2, 3), constraint=constraints.lower_cholesky), ValueError, "square"),
        (lambda: Site(shape=(3,), constraint=constraints.positive_semidefinite), ValueError, "dimension"),
        (lambda: Site(shape=(3, 3), constraint=constraints.positive_semidefinite), ValueError, "no bijection"),
        (lambda: Site(constraint=constraints.interval(1.0, 0.0)), ValueError, "upper_bound > lower_bound"),
        (lambda: Site(constraint=constraints.positive, init=-1.0), ValueError, "outside the support"),
        (lambda: Site(constraint=constraints.positive, init=0.0), ValueError, "outside the support"),
        (lambda: Site(shape=(2,), init=torch.zeros(3)), ValueError, "shape"),
        (lambda: Site(init=torch.tensor(1)), TypeError, "floating"),
        (lambda: Site(transform=torch.distributions.AbsTransform()), TypeError, "bijective"),
        (lambda: Site(constraint=constraints.positive, transform=ExpTransform()), ValueError, "not both"),
        (lambda: bijection_for(constraints.interval(torch.zeros(2), 1.0), torch.Size([3])), ValueError, "broadcast"),
    ],
)
def test_bad_sites_raise_naming_the_problem(make, error, words):
    with pytest.raises(error, match=words):
        make()
