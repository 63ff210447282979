"""Kernels against naive pairwise formulas; PSD, diag, composition, constraints, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from vitorch.models import gp

# Deterministic comparisons in float64: the only error is rounding in O(D) sums and
# one GEMM, ~1e-15 relative; 1e-10 leaves room for cancellation in |a|^2 + |b|^2 - 2ab.
TOL = 1e-10


def _naive_r2(x1, x2, ell):
    diff = (x1.unsqueeze(1) - x2.unsqueeze(0)) / ell
    return diff.pow(2).sum(-1)


def _naive(name, x1, x2, ell, var):
    r2 = _naive_r2(x1, x2, ell)
    r = r2.sqrt()
    return {
        "rbf": var * torch.exp(-0.5 * r2),
        "m12": var * torch.exp(-r),
        "m32": var * (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r),
        "m52": var * (1 + math.sqrt(5) * r + 5 * r2 / 3) * torch.exp(-math.sqrt(5) * r),
        "rq": var * (1 + r2 / (2 * 0.7)) ** (-0.7),
    }[name]


KERNELS = {
    "rbf": lambda ell, var: gp.RBF(ell, var),
    "m12": lambda ell, var: gp.Matern12(ell, var),
    "m32": lambda ell, var: gp.Matern32(ell, var),
    "m52": lambda ell, var: gp.Matern52(ell, var),
    "rq": lambda ell, var: gp.RationalQuadratic(ell, var, alpha=0.7),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_stationary_kernels_match_naive_formula_with_ard(name):
    x1, x2 = torch.randn(7, 3), torch.randn(5, 3)
    ell, var = torch.tensor([0.5, 1.3, 2.0]), 1.7
    k = KERNELS[name](ell, var)
    assert torch.allclose(k(x1, x2), _naive(name, x1, x2, ell, var), rtol=TOL, atol=TOL)
    assert torch.allclose(k.diag(x1), k(x1).diagonal(), rtol=TOL, atol=TOL)
    # symmetric and positive semi-definite: eigenvalues above -(rounding of an N x N matrix)
    kxx = k(x1)
    assert torch.allclose(kxx, kxx.mT, atol=TOL)
    assert float(torch.linalg.eigvalsh(kxx.detach()).min()) > -1e-12


def test_periodic_and_linear_match_formulas():
    x1, x2 = torch.randn(6, 2), torch.randn(4, 2)
    per = gp.Periodic(lengthscale=torch.tensor([0.8, 1.5]), variance=2.0, period=1.3)
    diff = x1.unsqueeze(1) - x2.unsqueeze(0)
    want = 2.0 * torch.exp(-2 * (torch.sin(math.pi * diff.abs() / 1.3) / torch.tensor([0.8, 1.5])).pow(2).sum(-1))
    assert torch.allclose(per(x1, x2), want, rtol=TOL, atol=TOL)
    assert torch.allclose(per.diag(x1), per(x1).diagonal(), rtol=TOL)
    lin = gp.Linear(variance=torch.tensor([0.5, 2.0]))
    assert torch.allclose(lin(x1, x2), (x1 * torch.tensor([0.5, 2.0])) @ x2.T, rtol=TOL, atol=TOL)
    assert torch.allclose(lin.diag(x1), lin(x1).diagonal(), rtol=TOL)


def test_sum_product_and_scaling():
    x = torch.randn(6, 2)
    k1, k2 = gp.RBF(0.7, 1.2), gp.Matern32(1.5, 0.4)
    assert torch.allclose((k1 + k2)(x), k1(x) + k2(x), rtol=TOL)
    assert torch.allclose((k1 * k2)(x), k1(x) * k2(x), rtol=TOL)
    scaled = 3.0 * k1
    assert isinstance(scaled, gp.Scale)
    assert torch.allclose(scaled(x), 3.0 * k1(x), rtol=1e-9)  # softplus round trip of 3.0
    assert torch.allclose((k1 + k2 * k1).diag(x), (k1 + k2 * k1)(x).diagonal(), rtol=TOL)
    names = {n for n, _ in (k1 + 2.0 * k2).named_parameters()}
    assert names == {"k1._lengthscale.raw", "k1._variance.raw", "k2._variance.raw", "k2.kernel._lengthscale.raw",
                     "k2.kernel._variance.raw"}  # fmt: skip


def test_every_hyperparameter_and_input_gets_a_gradient():
    x = torch.randn(5, 2, requires_grad=True)
    k = gp.RBF(torch.ones(2)) + gp.Periodic() * gp.Linear() + 2.0 * gp.RationalQuadratic()
    k(x, x + 0.1).sum().backward()
    for name, p in k.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()), name
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_matern_gradient_is_finite_at_zero_distance():
    x = torch.randn(4, 2, requires_grad=True)
    for k in (gp.Matern12(), gp.Matern32(), gp.Matern52()):
        x.grad = None
        k(x).sum().backward()
        assert bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_hyperparameters_raise_naming_them(bad):
    with pytest.raises(ValueError, match="lengthscale must be positive and finite"):
        gp.RBF(lengthscale=torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match="variance must be positive and finite"):
        gp.Matern52(variance=bad)
    with pytest.raises(ValueError, match="period"):
        gp.Periodic(period=bad)
    with pytest.raises(ValueError, match="noise"):
        gp.GaussianLikelihood(noise=bad)
    k = gp.RBF()
    with pytest.raises(ValueError, match="lengthscale"):
        k.lengthscale = bad


def test_mismatched_input_dimensions_raise_with_both_shapes():
    k = gp.RBF()
    with pytest.raises(ValueError, match=r"\(3, 2\) and X2 \(4, 3\)"):
        k(torch.randn(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        k(torch.randn(3))


@pytest.mark.parametrize(
    "make_kernel, name",
    [
        (lambda: gp.RBF(lengthscale=torch.ones(3)), "lengthscale"),
        (lambda: gp.Matern52(lengthscale=torch.ones(3)), "lengthscale"),
        (lambda: gp.Periodic(period=torch.ones(3)), "period"),
        (lambda: gp.Linear(variance=torch.ones(3)), "variance"),
        (lambda: gp.Matern12() + 2.0 * gp.RBF(lengthscale=torch.ones(3)), "lengthscale"),
    ],
)
def test_ard_hyperparameter_of_the_wrong_size_raises_naming_it(make_kernel, name):
    k = make_kernel()
    with pytest.raises(ValueError, match=rf"{name} has shape \(3,\).*X has D = 2 columns"):
        k(torch.randn(4, 2))
    with pytest.raises(ValueError, match=rf"{name} has shape \(3,\).*inducing inputs Z has D = 2"):
        k.check_dims(2, "inducing inputs Z")
    k.check_dims(3)  # the matching width passes
    assert k(torch.randn(4, 3)).shape == (4, 4)


def test_diverged_hyperparameter_is_reported_by_check():
    k = gp.RBF()
    with torch.no_grad():
        k._lengthscale.raw.fill_(float("nan"))
    with pytest.raises(ValueError, match="lengthscale"):
        k.check()


def test_means():
    x = torch.randn(4, 2)
    assert torch.equal(gp.ZeroMean()(x), torch.zeros(4))
    c = gp.ConstantMean(1.5)
    assert torch.equal(c(x), torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="constant must be finite"):
        gp.ConstantMean(float("nan"))
