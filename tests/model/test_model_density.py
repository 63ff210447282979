"""Model: the flat vector <-> named dict, the unconstrained density's shapes and Jacobians, bad input."""

from __future__ import annotations

import pytest
import torch
from model_cases import PRIOR_CASES
from torch.distributions import Gamma, Normal, constraints

from vitorch.model import Model, Site


def _many_sites():
    names = ["real", "positive", "simplex", "corr_cholesky", "positive_definite", "ordered_vector", "real_matrix"]
    sites = {n: PRIOR_CASES[n][0] for n in names}
    return Model(lambda p: sum(PRIOR_CASES[n][1](p[n]) for n in names), sites), names


def test_dim_slices_and_shapes():
    model, names = _many_sites()
    assert model.dim == 1 + 1 + 2 + 3 + 3 + 3 + 6
    z = torch.randn(4, 5, model.dim)
    values = model.constrain(z)
    assert list(values) == names
    for n in names:
        assert values[n].shape == (4, 5, *model.sites[n].shape)
    assert model.log_density(z).shape == (4, 5)
    torch.testing.assert_close(model.unconstrain(values), z)


def test_log_density_is_log_joint_plus_the_jacobians():
    model, names = _many_sites()
    z = torch.randn(3, model.dim)
    values = model.constrain(z)
    ladj = sum(
        model.sites[n].bijection.forward_and_ladj(
            z[..., model.slices[n]].reshape(3, *model.sites[n].unconstrained_shape)
        )[1]
        for n in names
    )
    expected = sum(PRIOR_CASES[n][1](values[n]) for n in names) + ladj
    torch.testing.assert_close(model.log_density(z), expected)


def test_log_joint_module_parameters_belong_to_the_model():
    class LogJoint(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.zeros(()))

        def forward(self, p):
            return Normal(self.loc, 1.0).log_prob(p["x"])

    model = Model(LogJoint(), {"x": Site()})
    assert [n for n, _ in model.named_parameters()] == ["log_joint.loc"]


def test_init_and_check_init():
    model = Model(lambda p: Gamma(2.0, 1.0).log_prob(p["s"]), {"s": Site(constraint=constraints.positive, init=3.0)})
    torch.testing.assert_close(model.init(), torch.tensor([3.0]).log())
    assert torch.isfinite(model.check_init())
    bad = Model(lambda p: Normal(0.0, 1.0).log_prob(p["x"]) + torch.where(p["x"] > 1, 0.0, -torch.inf), {"x": Site()})
    with pytest.raises(ValueError, match="starting point"):
        bad.check_init()


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: Model(3, {"x": Site()}), TypeError, "callable"),
        (lambda: Model(lambda p: p["x"], [Site()]), TypeError, "dict"),
        (lambda: Model(lambda p: p["x"], {}), ValueError, "empty"),
        (lambda: Model(lambda p: p["x"], {"x": 1.0}), TypeError, "Site"),
        (lambda: Model(lambda p: p["x"], {1: Site()}), TypeError, "strings"),
    ],
)
def test_bad_models(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_bad_calls_name_the_culprit():
    model = Model(lambda p: Normal(0.0, 1.0).log_prob(p["x"]).sum(-1), {"x": Site(shape=(2,))})
    with pytest.raises(ValueError, match="end in D = 2"):
        model.log_density(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="floating"):
        model.log_density(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="tensor"):
        model.constrain([0.0, 0.0])
    wrong = Model(lambda p: Normal(0.0, 1.0).log_prob(p["x"]), {"x": Site(shape=(2,))})  # forgot the site sum
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        wrong.log_density(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="return a tensor"):
        Model(lambda p: 0.0, {"x": Site()}).log_density(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="exactly the sites"):
        model.unconstrain({"y": torch.zeros(2)})
    positive = Model(lambda p: p["s"], {"s": Site(constraint=constraints.positive)})
    with pytest.raises(ValueError, match="outside its support"):
        positive.unconstrain({"s": torch.tensor([-1.0])})
