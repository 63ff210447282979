"""The heads' losses go through ``vitorch.kernels``; their values and gradients equal the posteriors' own maths.

The kernel (fused for a dense ``q(W)``, reference otherwise) is compared with the bound
written from the :class:`WeightPosterior` methods (``quad``, ``kl_to_isotropic``) for every
covariance structure; state is stored as the model is written (mean, factor, log noise);
state dicts saved by vitorch <= 0.4 (packed posteriors, ``_extra_state``) still load, with
a warning.
"""

from __future__ import annotations

import math

import pytest
import torch

import vitorch.kernels as vk
from vitorch.models.last_layer import (
    Dense,
    DensePrecision,
    Diagonal,
    LowRank,
    VBLLHeteroscedasticRegression,
    VBLLRegression,
)

COVARIANCES = {"dense": Dense, "precision": DensePrecision, "diagonal": Diagonal, "low_rank": LowRank.with_rank(2)}


def _perturb(head, scale=0.2):
    with torch.no_grad():
        for p in head.parameters():
            p.add_(scale * torch.randn_like(p))


def _generic_regression(head, phi, y, num_data):
    """The head's loss written from the posterior's methods: ``-mean(E log p) + (KL - log p(Sigma)) / N``."""
    w = head.weights
    quad, trace = w.quad_and_trace(phi)
    resid = y - phi @ w.mean.mT
    v = head.log_noise_variance
    expected = -0.5 * ((resid.pow(2) + quad) / v.exp() + v + math.log(2 * math.pi)).sum(-1)
    kl = w.kl_to_isotropic(head.prior_scale**2, trace).sum()
    return -(expected.mean() + (head.noise_log_prior() - kl) / num_data)


@pytest.mark.parametrize("cov", list(COVARIANCES))
@pytest.mark.parametrize("learn_noise", [False, True])
def test_regression_loss_matches_the_posterior_maths(cov, learn_noise):
    phi, y = torch.randn(9, 4), torch.randn(9, 2)
    head = VBLLRegression(4, 2, prior_scale=0.8, noise_variance=0.6, learn_noise=learn_noise,
                          covariance=COVARIANCES[cov])  # fmt: skip
    _perturb(head)
    out = head.loss(phi, y, 40)
    generic = _generic_regression(head, phi, y, 40)
    torch.testing.assert_close(out.loss, generic, rtol=1e-12, atol=1e-12)
    params = [p for p in head.parameters()]
    for a, b in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(generic, params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # on the full data set (batch = num_data) N * mean(bound) is the objective ELBO + log p(Sigma)
    full = head.loss(phi, y, 9)
    torch.testing.assert_close(9 * full.bound.mean(), (head.elbo(phi, y) + head.noise_log_prior()).detach())


@pytest.mark.parametrize("covs", [(Dense, Diagonal), (Dense, Dense), (Diagonal, Diagonal), (DensePrecision, Dense)])
@pytest.mark.parametrize("o", [1, 2])
def test_heteroscedastic_loss_matches_the_posterior_maths(covs, o):
    phi, y = torch.randn(9, 4), torch.randn(9, o)
    head = VBLLHeteroscedasticRegression(4, o, prior_scale=0.8, noise_prior_scale=0.3, noise_variance=0.6,
                                         covariance=covs[0], noise_covariance=covs[1])  # fmt: skip
    _perturb(head)
    out = head.loss(phi, y, 40)
    generic = -(head.expected_log_likelihood(phi, y).mean() - head.kl() / 40)
    torch.testing.assert_close(out.loss, generic, rtol=1e-12, atol=1e-12)
    params = list(head.parameters())
    for a, b in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(generic, params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_default_heads_take_the_fused_backend(monkeypatch):
    taken = []
    for name in ("RegressionBound", "HeteroscedasticBound", "HeteroscedasticDenseBound"):
        cls = getattr(vk.vbll_regression.fused, name)
        monkeypatch.setattr(cls, "apply", lambda *a, _f=cls.apply, _n=name: taken.append(_n) or _f(*a))
    phi, y = torch.randn(5, 4), torch.randn(5)
    VBLLRegression(4).loss(phi, y, 10)
    VBLLRegression(4, covariance=Diagonal).loss(phi, y, 10)
    VBLLHeteroscedasticRegression(4).loss(phi, y, 10)
    VBLLHeteroscedasticRegression(4, noise_covariance=Dense).loss(phi, y, 10)
    assert taken == ["RegressionBound", "HeteroscedasticBound", "HeteroscedasticDenseBound"]
    with vk.backend("reference"):
        VBLLRegression(4).loss(phi, y, 10)
    assert len(taken) == 3


def test_state_is_stored_as_the_model_is_written():
    head = VBLLRegression(4, 2, prior_scale=0.5, noise_variance=0.6, learn_noise=True)
    assert dict(head.named_parameters()).keys() == {"weights.mean", "weights.raw_tril", "log_noise_variance"}
    assert head.state_dict()["_extra_state"] == {"prior_scale": 0.5}  # a number: solve_posterior(tune=True) sets it
    torch.testing.assert_close(head.weights.covariance(), 0.25 * torch.eye(4).expand(2, 4, 4))
    hetero = VBLLHeteroscedasticRegression(4, noise_covariance=Dense, noise_variance=0.6)
    assert {"weights.raw_tril", "noise_weights.raw_tril", "log_noise_offset"} <= set(dict(hetero.named_parameters()))
    torch.testing.assert_close(hetero.offset.detach(), torch.full((1,), math.log(0.6)))


def _assert_same_state(fresh, head):
    """Equal state, ``raw_tril`` compared on its lower triangle (the entries that are read)."""
    for key, value in head.state_dict().items():
        got = fresh.state_dict()[key]
        if key.endswith("raw_tril"):
            got, value = got.tril(), value.tril()
        torch.testing.assert_close(got, value, msg=key)


def _packed(weights, spare=None):
    """The vitorch <= 0.4 layout of a dense posterior: per row ``[F | m]`` row-major, then spare entries."""
    raw = weights.raw_tril.detach().tril() + torch.randn_like(weights.raw_tril).triu(1)  # upper: unused
    rows = torch.cat([raw, weights.mean.detach()[..., None]], -1).flatten(1)
    return rows if spare is None else torch.cat([rows, spare[:, None]], -1)


def test_old_regression_state_dict_loads_with_a_warning():
    head = VBLLRegression(3, 2, prior_scale=0.5, noise_variance=0.6, learn_noise=True)
    _perturb(head)
    head.prior_scale = 0.7
    old = {"weights.packed": _packed(head.weights, head.log_noise_variance.detach()),
           "_extra_state": {"prior_scale": 0.7}}  # fmt: skip
    fresh = VBLLRegression(3, 2, learn_noise=True)
    with pytest.warns(UserWarning, match="vitorch <= 0.4 VBLL state_dict") as record:
        fresh.load_state_dict(old)
    assert len(record) == 1, "one warning per load"
    _assert_same_state(fresh, head)
    # the fixed noise was a buffer named log_noise; another posterior had no packed storage
    fixed = VBLLRegression(3, 2, learn_noise=False, covariance=Diagonal)
    state = {k: v for k, v in fixed.state_dict().items() if k != "log_noise_variance"}
    state |= {"log_noise": torch.tensor([0.1, 0.2]), "_extra_state": {"prior_scale": 2.0}}
    with pytest.warns(UserWarning, match="'log_noise'"):
        fixed.load_state_dict(state)
    torch.testing.assert_close(fixed.log_noise_variance, torch.tensor([0.1, 0.2]))
    assert fixed.prior_scale == 2.0


def test_old_heteroscedastic_state_dict_loads_with_a_warning():
    head = VBLLHeteroscedasticRegression(3, 2, noise_covariance=Dense)
    _perturb(head)
    old = {"weights.packed": _packed(head.weights), "noise_weights.packed": _packed(head.noise_weights, head.offset),
           "_gh_nodes": head._gh_nodes, "_gh_log_weights": head._gh_log_weights}  # fmt: skip
    fresh = VBLLHeteroscedasticRegression(3, 2, noise_covariance=Dense)
    with pytest.warns(UserWarning, match="weights.packed"):
        fresh.load_state_dict(old)
    _assert_same_state(fresh, head)


def test_a_packed_posterior_loads_on_its_own():
    w = Dense(2, 3)
    _perturb(w)
    fresh = Dense(2, 3)
    with pytest.warns(UserWarning):
        fresh.load_state_dict({"packed": _packed(w)})
    torch.testing.assert_close(fresh.covariance(), w.covariance().detach())
    with pytest.raises(ValueError, match="packed posterior"):
        fresh.load_state_dict({"packed": torch.zeros(2, 5)})
