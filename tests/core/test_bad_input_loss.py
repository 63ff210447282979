"""A log-joint of ``+inf`` is a bug in the model, and ``vitorch.loss`` says which datum.

The log-space reductions clamp ``+inf`` to ``1e30``, so before this check a model with
a density that is infinite somewhere (a likelihood with a zero scale) trained on a
finite loss of about ``-2.5e29`` without a word.  Eager calls raise ``ValueError``
naming the datum and the particle; inside ``torch.compile`` (where reading the flag
would break the graph) the value becomes NaN, which the loss carries to ``fit``'s
non-finite guard.  ``-inf`` (a particle outside the model's support) stays legal,
and a datum whose particles are all impossible keeps a finite loss in float16 too.
"""

from __future__ import annotations

import math

import pytest
import torch

import vitorch as vt

O, E = vt.objectives, vt.estimators


def _poisoned(at: tuple[int, ...], particle: int = 1):
    def log_joint(z):
        log_p = -0.5 * z.pow(2).sum(-1)
        mask = torch.zeros_like(log_p, dtype=torch.bool)
        mask[(particle, *at)] = True
        return torch.where(mask, math.inf, log_p)

    return log_joint


PAIRS = {
    "elbo/reparam": (O.elbo, E.reparam),
    "iwae/dreg": (O.iwae, E.dreg),
    "elbo/stl": (O.elbo, E.stl),
    "iwae/score": (O.iwae, E.score()),
    "piwae/dreg": (O.piwae(2), E.dreg),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_plus_inf_log_joint_raises_naming_the_datum(pair):
    objective, estimator = PAIRS[pair]
    q = vt.DiagNormal(torch.zeros(5, 2, requires_grad=True), torch.ones(5, 2))
    with pytest.raises(
        ValueError, match=r"\+inf for datum 3 \(particle 1 of 4; 1 datum\(s\) in all\).*bug in the model"
    ):
        vt.loss(_poisoned((3,)), q, 4, objective, estimator)


def test_plus_inf_names_a_multi_dimensional_datum():
    q = vt.DiagNormal(torch.zeros(2, 3, 2), torch.ones(2, 3, 2))
    with pytest.raises(ValueError, match=r"datum \(1, 2\) \(particle 0 of 2"):
        vt.loss(_poisoned((1, 2), particle=0), q, 2)


def test_minus_inf_is_still_a_particle_of_zero_weight():
    q = vt.DiagNormal(torch.zeros(5, 2, requires_grad=True), torch.ones(5, 2))

    def log_joint(z):
        log_p = -0.5 * z.pow(2).sum(-1)
        return torch.where(torch.arange(5) == 3, -math.inf, log_p)

    out = vt.loss(log_joint, q, 4, O.iwae, E.dreg)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("pair", ["elbo/reparam", "iwae/dreg", "iwae/score", "piwae/dreg"])
def test_an_impossible_datum_keeps_a_half_precision_loss_finite(pair):
    # The floor -1e30 of a datum with no possible particle overflowed float16 to an inf loss;
    # it is now float16's lowest finite value, with a zero gradient.
    objective, estimator = PAIRS[pair]
    loc = torch.zeros(3, 2, dtype=torch.float16, requires_grad=True)
    q = vt.DiagNormal(loc, torch.ones(3, 2, dtype=torch.float16))

    def log_joint(z):
        return torch.where(torch.arange(3) == 1, -math.inf, -0.5 * z.pow(2).sum(-1))

    out = vt.loss(log_joint, q, 4, objective, estimator)
    assert out.loss.dtype == torch.float16 and torch.isfinite(out.loss)
    assert out.bound[1] == torch.finfo(torch.float16).min and torch.isfinite(out.bound).all()
    (g,) = torch.autograd.grad(out.loss, loc)
    assert torch.isfinite(g).all() and (g[1] == 0).all()


def test_compiled_loss_turns_plus_inf_into_nan():
    # torch.compile turns torch.distributions' default validation off for the whole process
    # (torch._dynamo.eval_frame's patch()); restore it for the tests that follow.
    validate = torch.distributions.Distribution._validate_args
    q_loc = torch.zeros(3, 2, requires_grad=True)
    try:

        @torch.compile(fullgraph=True, backend="eager")
        def step():
            q = vt.DiagNormal(q_loc, torch.ones(3, 2), validate_args=False)
            return vt.loss(_poisoned((0,)), q, 2).loss

        assert torch.isnan(step())
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
