"""Automatic guides: every valid objective/estimator pair runs with every guide (STL and DReG
included), the Laplace guide is exact on a Gaussian target, and the parameterizations are
what the docs say."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Gamma, MultivariateNormal, Normal, constraints

import vitorch as vt
from vitorch.model import AutoFlow, AutoFullRankNormal, AutoGuide, AutoLaplace, Model, Site

KINDS = ["diag", "full", "lowrank", "flow", "laplace"]
OBJECTIVES = {
    "elbo": vt.objectives.elbo,
    "iwae": vt.objectives.iwae,
    "miwae(2)": vt.objectives.miwae(2),
    "ciwae(0.5)": vt.objectives.ciwae(0.5),
    "renyi(0.5)": vt.objectives.renyi(0.5),
    "cubo": vt.objectives.cubo(),
    "piwae(2)": vt.objectives.piwae(2),
    "vis": vt.objectives.vis(),
}
ESTIMATORS = {
    "reparam": vt.estimators.reparam,
    "stl": vt.estimators.stl,
    "dreg": vt.estimators.dreg,
    "score": vt.estimators.score(),
    "vimco": vt.estimators.vimco,
}


def _model():
    y = torch.tensor([1.2, 0.4, 2.1, 1.7])

    def log_joint(p):
        prior = Normal(0.0, 3.0).log_prob(p["mu"]) + Gamma(2.0, 2.0).log_prob(p["s"])
        return prior + Normal(p["mu"].unsqueeze(-1), p["s"].unsqueeze(-1)).log_prob(y).sum(-1)

    return Model(log_joint, {"mu": Site(), "s": Site(constraint=constraints.positive)})


def _valid_pairs():
    q = AutoGuide(_model(), "diag")()
    for (on, o), (en, e) in itertools.product(OBJECTIVES.items(), ESTIMATORS.items()):
        try:
            vt.check(q, 4, o, e)
        except ValueError:
            continue
        yield on, en


PAIRS = list(_valid_pairs())


def test_the_pair_list_covers_stl_and_dreg():
    assert ("elbo", "stl") in PAIRS and ("iwae", "dreg") in PAIRS and len(PAIRS) >= 15


@pytest.mark.parametrize("kind", KINDS)
def test_every_valid_pair_runs_with_every_guide(kind):
    model = _model()
    guide = AutoGuide(model, kind)
    params = [p for p in guide.parameters()]
    for objective, estimator in PAIRS:
        out = vt.loss(model.log_density, guide(), 4, OBJECTIVES[objective], ESTIMATORS[estimator])
        assert torch.isfinite(out.loss), (objective, estimator)
        if params:
            grads = torch.autograd.grad(out.loss, params, allow_unused=True)
            assert all(g is None or bool(torch.isfinite(g).all()) for g in grads), (objective, estimator)
            assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), (objective, estimator)


def test_kind_dispatch_and_errors():
    model = _model()
    assert isinstance(AutoGuide(model, "full"), AutoFullRankNormal)
    assert isinstance(AutoGuide(model, "full"), AutoGuide)
    with pytest.raises(ValueError, match="kind must be one of"):
        AutoGuide(model, "gaussian")
    with pytest.raises(ValueError, match="'full' guide"):
        AutoFullRankNormal(model, "diag")
    with pytest.raises(TypeError, match="Model"):
        AutoGuide(lambda z: z, "diag")
    with pytest.raises(ValueError, match="init_scale"):
        AutoGuide(model, "diag", init_scale=0.0)
    with pytest.raises(ValueError, match="init_loc"):
        AutoGuide(model, "diag", init_loc=torch.zeros(3))


def test_guides_start_at_the_model_init_with_init_scale():
    model = Model(lambda p: Gamma(2.0, 1.0).log_prob(p["s"]), {"s": Site(constraint=constraints.positive, init=4.0)})
    for kind in ("diag", "full", "lowrank"):
        q = AutoGuide(model, kind, init_scale=0.3)()
        torch.testing.assert_close(q.mean, torch.tensor([4.0]).log())
        assert q.variance.item() == pytest.approx(0.09, rel=0.05 if kind == "lowrank" else 1e-12)
    flow = AutoGuide(model, "flow", init_scale=0.3)
    torch.testing.assert_close(flow.standardize.loc, torch.tensor([4.0]).log())


def test_full_rank_factor_is_diag_scale_times_unit_lower():
    guide = AutoGuide(_model(), "full")
    with torch.no_grad():
        guide.log_scale.copy_(torch.tensor([0.0, math.log(2.0)]))
        guide.lower.copy_(torch.tensor([[5.0, 7.0], [0.5, 9.0]]))  # the diagonal and upper triangle are ignored
    torch.testing.assert_close(guide().scale_tril, torch.tensor([[1.0, 0.0], [1.0, 2.0]]))


def test_laplace_is_exact_on_a_gaussian_target():
    loc = torch.tensor([1.0, -2.0, 0.5])
    a = torch.tensor([[2.0, 0.0, 0.0], [0.6, 1.0, 0.0], [-0.3, 0.4, 0.5]])
    target = MultivariateNormal(loc, scale_tril=a)
    model = Model(lambda p: target.log_prob(p["x"]), {"x": Site(shape=(3,))})
    q = AutoLaplace(model)()
    torch.testing.assert_close(q.loc, loc, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q.covariance_matrix, target.covariance_matrix, rtol=1e-6, atol=1e-6)


def test_laplace_state_round_trips_and_map_init():
    model = _model()
    guide = AutoLaplace(model, method="adam", steps=1000)
    guide.fit()
    again = AutoLaplace(model)
    again.load_state_dict(guide.state_dict())
    torch.testing.assert_close(again().loc, guide().loc)
    lbfgs = AutoGuide(model, "laplace")()
    torch.testing.assert_close(lbfgs.loc, guide().loc, rtol=1e-3, atol=1e-3)  # Adam's last steps jitter
    started = AutoGuide(model, "diag", init_loc="map")
    torch.testing.assert_close(started.loc.detach(), lbfgs.loc, rtol=1e-5, atol=1e-5)


def test_laplace_without_a_mode_raises():
    # An improper flat density in one direction has a singular Hessian.
    model = Model(lambda p: Normal(0.0, 1.0).log_prob(p["x"][..., 0]), {"x": Site(shape=(2,))})
    with pytest.raises(ValueError, match="not positive definite"):
        AutoLaplace(model).fit()


def test_flow_guide_defaults_and_custom_layers():
    model = _model()
    guide = AutoGuide(model, "flow")
    assert guide.default_lr == 0.005 and AutoGuide(model, "full").default_lr == 0.02
    q = guide()
    assert q.transforms[-1] is guide.standardize
    z, log_q = q.rsample_and_log_prob((5,))
    torch.testing.assert_close(q.log_prob(z), log_q)
    custom = AutoFlow(model, transforms=[vt.flows.MAF(2, vt.flows.RQSpline())])
    assert len(custom().transforms) == 2
    with pytest.raises(ValueError, match="dim 2"):
        AutoFlow(model, transforms=[vt.flows.Planar(3)])


def test_default_flow_starts_as_the_diagonal_gaussian_at_the_start_point():
    # Zero-initialized output layers make every coupling the identity, so the untrained guide
    # is exactly N(z0, init_scale^2 I): its log_prob must equal that Gaussian's (to rounding).
    model = _model()
    z0 = torch.tensor([0.3, -0.2], dtype=torch.float64)
    for layers in ("affine", "spline"):
        torch.manual_seed(2)
        q = AutoFlow(model, init_loc=z0, init_scale=0.3, layers=layers, dtype=torch.float64)()
        z = z0 + torch.randn(50, 2, dtype=torch.float64)
        expected = Normal(z0, 0.3).log_prob(z).sum(-1)
        torch.testing.assert_close(q.log_prob(z), expected, rtol=1e-12, atol=1e-12)


def test_state_dict_round_trips_every_trainable_guide():
    model = _model()
    for kind in ("diag", "full", "lowrank", "flow"):
        torch.manual_seed(1)
        a = AutoGuide(model, kind)
        with torch.no_grad():
            for p in a.parameters():
                p.add_(0.1 * torch.randn_like(p))
        torch.manual_seed(2)
        b = AutoGuide(model, kind)
        b.load_state_dict(a.state_dict())
        z = torch.randn(4, model.dim)
        torch.testing.assert_close(b().log_prob(z), a().log_prob(z))
