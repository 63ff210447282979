"""Gradients of the Gaussian families (TESTING.md families 4 and 5).

* ``gradcheck`` (float64 finite differences) of ``log_prob`` with respect to every
  parameter and the value, of ``entropy``, and of ``rsample_and_log_prob`` under a
  fixed seed.
* Reparameterized Monte Carlo gradients of ``E_q[f(z)]`` for linear and quadratic
  ``f(z) = a.z + z^T B z`` against the closed form
  ``E f = a.mu + mu^T B mu + tr(B Sigma)``:
  ``d/d mu = a + 2 B mu``; ``d/d scale = 2 diag(B) scale``; ``d/d L = 2 B L``;
  ``d/d W = 2 B W``; ``d/d cov_diag = diag(B)``.
"""

from __future__ import annotations

import math

import gaussian_cases as gc
import pytest
import torch
from torch.autograd import gradcheck

from vitorch.families import DiagNormal, FullRankNormal, LowRankNormal

from conftest import Z

D = 3
N = 20000


def _leaves(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone().requires_grad_() for k, v in p.items()}


@pytest.mark.parametrize("kind", gc.FAMILIES)
def test_gradcheck_log_prob_entropy_and_fused_draw(kind):
    p = _leaves(gc.params(kind, (2,), D))
    names = list(p)
    value = torch.randn(4, 2, D, requires_grad=True)
    cls = gc.CLASSES[kind]

    def log_prob(*args):
        # validate_args=False: finite differences step off the lower triangle of scale_tril.
        return cls(*args[:-1], validate_args=False).log_prob(args[-1])

    def entropy(*args):
        return cls(*args, validate_args=False).entropy()

    def fused(*args):
        torch.manual_seed(0)  # the same noise at every perturbed point
        return cls(*args, validate_args=False).rsample_and_log_prob((3,))

    params = [p[k] for k in names]
    assert gradcheck(log_prob, (*params, value))
    assert gradcheck(entropy, tuple(params))
    assert gradcheck(fused, tuple(params))


def _analytic_grad(kind: str, p: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> dict:
    grads = {"loc": a + 2 * b @ p["loc"]}
    if kind == "diag":
        grads["scale"] = 2 * b.diagonal() * p["scale"]
    elif kind == "full":
        grads["scale_tril"] = 2 * b @ p["scale_tril"]
    else:
        grads["cov_factor"] = 2 * b @ p["cov_factor"]
        grads["cov_diag"] = b.diagonal().clone()
    return grads


@pytest.mark.parametrize("f", ["linear", "quadratic"])
@pytest.mark.parametrize("kind", gc.FAMILIES)
def test_reparameterized_gradient_matches_closed_form(kind, f):
    p = gc.params(kind, (), D)
    a = torch.randn(D)
    b = torch.randn(D, D) if f == "quadratic" else torch.zeros(D, D)
    b = (b + b.T) / 2

    def objective(z):
        return z @ a + ((z @ b) * z).sum(-1)

    # Shared parameters, N particles: the gradient a user gets from one backward pass.
    seed = int(torch.randint(2**31, ()))  # drawn from the test's seeded stream
    torch.manual_seed(seed)
    shared = _leaves(p)
    z = gc.family(kind, shared).rsample((N,))
    objective(z).mean().backward()

    # The same draws with one copy of the parameters per particle: per-particle
    # gradients, hence the standard error of their mean from the same draws.
    torch.manual_seed(seed)
    copies = {k: v.expand(N, *v.shape).clone().requires_grad_() for k, v in p.items()}
    z_copies = gc.family(kind, copies).rsample()
    # The same draws; the folded GEMM and the per-matrix products may round differently.
    torch.testing.assert_close(z, z_copies, rtol=1e-12, atol=1e-12)
    objective(z_copies).sum().backward()

    for name, exact in _analytic_grad(kind, p, a, b).items():
        per_particle = copies[name].grad
        mean = per_particle.mean(0)
        # Folding particles into one GEMM must give the mean of the per-particle gradients.
        torch.testing.assert_close(shared[name].grad, mean, rtol=1e-12, atol=1e-12)
        se = per_particle.std(0) / math.sqrt(N)
        if name == "scale_tril":  # the strict upper triangle is not a parameter of the law
            mean, exact, se = mean.tril(), exact.tril(), se.tril()
        # Z standard errors, plus float64 round-off for entries whose gradient is exact (se = 0).
        tol = Z * se + 1e-10 * (1 + exact.abs())
        assert ((mean - exact).abs() <= tol).all(), (name, mean, exact, se)


def test_gradient_reaches_unbroadcast_parameters():
    """A shared scale_tril / cov_factor used by a batch of means gets the summed gradient.

    The reference materializes one copy per batch element (``expand().clone()``), so it
    takes the per-matrix path of ``_linalg`` instead of the folded one.
    """
    loc = torch.randn(5, D, requires_grad=True)
    tril = (torch.eye(D) + 0.2 * torch.randn(D, D).tril(-1)).requires_grad_()
    w = torch.randn(D, 2, requires_grad=True)
    diag = torch.ones(D, requires_grad=True)
    value = torch.randn(4, 5, D)
    for q, ref in [
        (FullRankNormal(loc, tril), FullRankNormal(loc, tril.expand(5, D, D).clone())),
        (LowRankNormal(loc, w, diag), LowRankNormal(loc, w.expand(5, D, 2).clone(), diag.expand(5, D).clone())),
        (DiagNormal(loc, diag), DiagNormal(loc, diag.expand(5, D).clone())),
    ]:
        params = [loc, tril, w, diag]
        g = torch.autograd.grad(q.log_prob(value).sum(), params, allow_unused=True)
        g_ref = torch.autograd.grad(ref.log_prob(value).sum(), params, allow_unused=True)
        for x, y in zip(g, g_ref):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
