"""``rsample_and_stopped_log_prob``: the draw STL and DReG read, for every family.

Its value must be ``log q(z)``, its gradient must reach the parameters only through
``z`` (``score^T dz/dtheta`` with ``score = d log q / dz``), and for the Gaussians,
whose stopped log-density is rewritten as ``eps + L^{-1}(z - sg(z))``, the second
derivative in ``z`` must still be ``-Sigma^{-1}`` (Roeder et al., 2017).  Float64 and
well-conditioned parameters, so the tolerances are a few hundred ulps.
"""

from __future__ import annotations

import gaussian_cases as gc
import pytest
import torch
from torch.testing import assert_close

import vitorch as vt
from vitorch.families.base import rsample_and_stopped_log_prob

D = 3
TOL = {"rtol": 1e-10, "atol": 1e-10}


def _gaussian(kind):
    def make():
        p = {k: v.requires_grad_() for k, v in gc.params(kind, (2,), D).items()}
        return gc.family(kind, p), list(p.values())

    return make


def _positive(make, n, shape=(2, D)):
    def build():
        params = [(torch.rand(shape) + 0.5).requires_grad_() for _ in range(n)]
        return make(*params), params

    return build


def _flow():
    torch.manual_seed(0)
    transforms = [vt.flows.MAF(D, hidden=(8,)), vt.flows.ElementwiseAffine(D)]
    base = vt.DiagNormal(torch.zeros(D), torch.ones(D))
    params = [p for t in transforms for p in t.parameters()]
    return vt.Flow(base, transforms), params


FAMILIES = {
    "DiagNormal": _gaussian("diag"),
    "FullRankNormal": _gaussian("full"),
    "LowRankNormal": _gaussian("lowrank"),
    "Gamma": _positive(vt.Gamma, 2),
    "Beta": _positive(vt.Beta, 2),
    "Dirichlet": _positive(vt.Dirichlet, 1),
    "RSVIGamma(correction=False)": _positive(lambda a, b: vt.RSVIGamma(a, b, boost=1, correction=False), 2),
    "Flow": _flow,
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_value_is_log_q_and_gradient_reaches_the_parameters_only_through_z(name):
    q, params = FAMILIES[name]()
    z, log_q = q.rsample_and_stopped_log_prob((4,))
    assert z.shape == (4, *q.batch_shape, *q.event_shape) and log_q.shape == (4, *q.batch_shape)
    assert_close(log_q, q.log_prob(z.detach()), **TOL)

    z0 = z.detach().requires_grad_()
    (score,) = torch.autograd.grad(q.log_prob(z0).sum(), z0)
    got = torch.autograd.grad(log_q.sum(), params, retain_graph=True, allow_unused=True)
    expected = torch.autograd.grad(z, params, grad_outputs=score, retain_graph=True, allow_unused=True)
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert_close(g, e, **TOL)
    (dz,) = torch.autograd.grad(log_q.sum(), z, retain_graph=True)
    assert_close(dz, score, **TOL)


@pytest.mark.parametrize("kind", gc.FAMILIES)
def test_gaussian_stopped_log_density_has_the_exact_hessian_in_z(kind):
    q, _ = _gaussian(kind)()
    z, log_q = q.rsample_and_stopped_log_prob((4,))
    (dz,) = torch.autograd.grad(log_q.sum(), z, create_graph=True)
    v = torch.randn_like(z)
    (hv,) = torch.autograd.grad((dz * v).sum(), z)
    precision = torch.linalg.inv(q.covariance_matrix.detach())
    assert_close(hv, -(precision @ v.unsqueeze(-1)).squeeze(-1), **TOL)


def test_torch_distributions_fall_back_to_the_stopped_log_prob():
    loc = torch.randn(2, D, requires_grad=True)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, torch.ones(2, D)), 1)
    z, log_q = rsample_and_stopped_log_prob(q, (3,))
    assert_close(log_q, q.log_prob(z.detach()), **TOL)
    (g,) = torch.autograd.grad(log_q.sum(), loc)
    # Through z alone (dz/dloc = I): sum_k -(z_k - loc); the direct score would have the opposite sign.
    assert_close(g, -(z - loc).detach().sum(0), **TOL)
