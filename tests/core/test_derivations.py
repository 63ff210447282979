"""The thin core: generic derivations, plain-callable objectives, vt.expect, from_terms, K types.

Stochastic assertions use ``Z`` standard errors from the same draws (conftest: Z = 5.2,
two-sided p ~ 2e-7 each).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import vitorch as vt
from vitorch import _logspace as ls

from conftest import Z
from core import lingauss as lg

O, E = vt.objectives, vt.estimators
CLOSED = [O.elbo, O.iwae, O.miwae(2), O.renyi(0.5), O.renyi(2.0), O.cubo(2), O.vis().guide]


def _generic(objective):
    """The same bound with every closed-form helper hidden: the estimators' generic path."""
    return O.as_objective(lambda log_w: objective(log_w))


def _log_w(dead=True):
    lw = 2.0 * torch.randn(6, 5)
    if dead:
        lw[:2, 1] = -torch.inf  # zero-weight particles
        lw[:, 3] = -torch.inf  # a datum with no possible particle
    return lw


@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("objective", CLOSED, ids=str)
def test_closed_forms_equal_the_generic_derivation(objective, dead):
    lw = _log_w(dead)
    torch.testing.assert_close(E.grad_weights(objective, lw), E.grad_weights(_generic(objective), lw))
    torch.testing.assert_close(E.dreg_weights(objective, lw), E.dreg_weights(_generic(objective), lw))


def test_generic_dreg_weights_are_iwaes_squared_weights():
    lw = _log_w(dead=False)
    w = torch.softmax(lw, 0)
    torch.testing.assert_close(E.dreg_weights(_generic(O.iwae), lw), w.pow(2))
    torch.testing.assert_close(E.dreg_weights(_generic(O.elbo), lw), torch.full_like(lw, 1 / 6))


def test_learning_signal_masks_dead_data():
    lw = _log_w()
    signal = E.learning_signal(O.iwae, lw, 0.0)
    assert (signal[:, 3] == 0).all() and torch.isfinite(signal).all()


def _grads(objective, estimator, K=4, seed=5):
    torch.manual_seed(seed)
    B = 3
    m = torch.randn(B, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    theta = torch.tensor([0.3, -0.2], requires_grad=True)
    out = vt.loss(
        lg.log_joint(torch.ones(B, 2), theta), vt.DiagNormal(m, 0.8 * torch.ones(B, 2)), K, objective, estimator
    )
    return (out.loss, *torch.autograd.grad(out.loss, [m, theta]))


@pytest.mark.parametrize("estimator", [E.reparam, E.dreg, E.score(), E.vimco], ids=str)
def test_a_plain_callable_objective_equals_the_built_in(estimator):
    def my_iwae(log_w):
        return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])

    for a, b in zip(_grads(my_iwae, estimator), _grads(O.iwae, estimator)):
        torch.testing.assert_close(a, b)


def test_stl_refuses_a_callable_and_names_it():
    q = vt.DiagNormal(torch.zeros(2), torch.ones(2))

    def my_bound(log_w):
        return log_w.mean(0)

    with pytest.raises(ValueError, match="stl is unbiased only.*my_bound"):
        vt.loss(lambda z: -z.pow(2).sum(-1), q, 2, my_bound, E.stl)
    with pytest.raises(ValueError, match="is a class"):
        vt.loss(lambda z: -z.pow(2).sum(-1), q, 2, O.Objective, E.reparam)


@pytest.mark.parametrize("k", [np.int64(3), torch.tensor(3), 3])
def test_num_particles_accepts_any_integer(k):
    q = vt.DiagNormal(torch.zeros(2), torch.ones(2))
    assert vt.loss(lambda z: -z.pow(2).sum(-1), q, k).log_w.shape == (3,)


@pytest.mark.parametrize("k", [True, 2.0, torch.tensor(2.0), torch.tensor([2]), 0, -1])
def test_num_particles_refuses_non_integers(k):
    q = vt.DiagNormal(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="num_particles"):
        vt.loss(lambda z: -z.pow(2).sum(-1), q, k)


# ------------------------------------------------------------------ score baselines and impossible data


def _dead_datum_log_joint(B):
    def f(z):
        lp = lg.log_joint(torch.zeros(B, 2), torch.zeros(2))(z)
        return torch.cat([lp[:, :-1], torch.full_like(lp[:, -1:], -torch.inf)], 1)

    return f


@pytest.mark.parametrize("make", [E.MovingAverageBaseline, E.LearnedBaseline])
def test_an_impossible_datum_never_enters_a_baseline(make):
    # The floor -1e30 stands for -inf: averaged in (or squared) it poisons the baseline.
    B = 4
    baseline = make()
    m = torch.zeros(B, 2, requires_grad=True)
    for _ in range(3):
        out = vt.loss(_dead_datum_log_joint(B), vt.DiagNormal(m, torch.ones(B, 2)), 3, O.elbo, E.score(baseline))
        grads = torch.autograd.grad(out.loss, [m, *baseline.parameters()])
        assert all(torch.isfinite(g).all() and g.abs().max() < 1e3 for g in grads)
    assert int(baseline.excluded) == 3
    if make is E.MovingAverageBaseline:
        assert abs(float(baseline.value)) < 100
    assert "excluded" not in baseline.state_dict()  # a report, not state: checkpoints unchanged


# ------------------------------------------------------------------ vt.expect


@pytest.mark.parametrize("estimator", [E.reparam, E.score()], ids=str)
def test_expect_is_unbiased_in_value_and_gradient(estimator):
    # E[z^2] under N(m, s^2) is m^2 + s^2; its gradient (2m, 2s).  R replicates in the batch.
    R, K = 20_000, 2
    m = torch.full((R,), 0.7, requires_grad=True)
    s = torch.full((R,), 1.3, requires_grad=True)
    q = torch.distributions.Normal(m, s)
    value = vt.expect(lambda z: z.pow(2), q, K, estimator)
    assert value.shape == (R,)
    gm, gs = torch.autograd.grad(value.sum(), [m, s])
    for draws, target in [(value.detach(), 0.7**2 + 1.3**2), (gm, 1.4), (gs, 2.6)]:
        assert abs(draws.mean() - target) < Z * draws.std() / R**0.5


def test_expect_refuses_bound_estimators_and_bad_shapes():
    q = vt.DiagNormal(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="reparam or score"):
        vt.expect(lambda z: z.sum(-1), q, 2, E.dreg)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        vt.expect(lambda z: z, q, 2)
    bern = torch.distributions.Bernoulli(probs=torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="score"):
        vt.expect(lambda z: z, bern, 2)
    assert vt.expect(lambda z: z, bern, 2, E.score()).shape == (3,)


# ------------------------------------------------------------------ LossOutput.from_terms


def test_from_terms_is_the_per_datum_share_of_the_full_data_bound():
    ell = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    kl = torch.tensor(6.0, requires_grad=True)
    out = vt.LossOutput.from_terms(ell, kl, num_data=30)
    torch.testing.assert_close(out.bound, torch.tensor([-1.2, -2.2, -3.2]))
    torch.testing.assert_close(out.loss, torch.tensor(2.2))
    assert out.log_w is None and out.z is None and not out.bound.requires_grad
    g_ell, g_kl = torch.autograd.grad(out.loss, [ell, kl])
    torch.testing.assert_close(g_ell, torch.full((3,), -1 / 3))
    torch.testing.assert_close(g_kl, torch.tensor(1 / 30))
    for args, needle in [
        ((ell[0], kl, 3), "expected_log_lik"),
        ((ell[:0], kl, 3), "non-empty"),
        ((ell, kl.expand(2), 3), "kl must be a scalar"),
        ((ell, kl, 0), "num_data"),
        ((ell, kl, 3.0), "num_data"),
    ]:
        with pytest.raises(ValueError, match=needle):
            vt.LossOutput.from_terms(*args)


def test_loss_value_is_the_bound_and_log_w_is_detached():
    q = vt.DiagNormal(torch.zeros(3, 2, requires_grad=True), torch.ones(3, 2))
    for objective in [O.elbo, O.iwae, O.cubo(2)]:
        out = vt.loss(lg.log_joint(torch.zeros(3, 2), torch.zeros(2)), q, 4, objective)
        torch.testing.assert_close(out.loss, -objective.sign * objective(out.log_w).mean())
        assert not out.log_w.requires_grad and out.z.requires_grad
        assert torch.isfinite(ls.finite_mean(out.bound))


def test_piwae_warns_when_float32_loses_guide_particles():
    # Log-weights spread over hundreds of nats: model weights underflow in float32 while
    # PIWAE's group weights of the same particles are O(1).
    torch.manual_seed(0)
    m = torch.zeros(64, 4, dtype=torch.float32, requires_grad=True)
    q = vt.DiagNormal(m, torch.ones(64, 4, dtype=torch.float32))
    with pytest.warns(RuntimeWarning, match="underflows in torch.float32"):
        vt.loss(lambda z: -60.0 * z.pow(2).sum(-1), q, 10, O.piwae(5), E.dreg)
    q64 = vt.DiagNormal(m.double(), torch.ones(64, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vt.loss(lambda z: -60.0 * z.pow(2).sum(-1), q64, 10, O.piwae(5), E.dreg)


def test_an_empty_batch_is_refused_by_name():
    q = vt.DiagNormal(torch.zeros(0, 2), torch.ones(0, 2))
    with pytest.raises(ValueError, match=r"empty batch \(0,\)"):
        vt.loss(lambda z: -z.pow(2).sum(-1), q, 3, O.iwae, E.dreg)
