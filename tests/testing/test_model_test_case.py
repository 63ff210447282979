"""ModelTestCase on a conjugate toy model, and proof that each of its tests can fail.

The toy: ``z_i ~ N(m, I_D)``, ``x_i | z_i ~ N(z_i, s^2 I_D)`` with an amortized
diagonal-Gaussian guide ``q(z_i | x_i) = N(a x_i + b, softplus(c)^2)``, trained through
``vt.loss`` (ELBO, reparameterization).  Its exact log evidence is
``log p(x_i) = log N(x_i; m, (1 + s^2) I_D)``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import vitorch as vt
from vitorch.testing import ModelTestCase

D = 2
LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """``log N(x; mean, var I)`` summed over the last dimension."""
    return (-0.5 * (x - mean).pow(2) / var - 0.5 * torch.log(var) - 0.5 * LOG_2PI).sum(-1)


class GaussianMean(nn.Module):
    """The conjugate toy: a learned prior mean ``m``, noise ``log s``, and an affine guide."""

    def __init__(self, num_particles: int = 2):
        super().__init__()
        self.prior_mean = nn.Parameter(0.1 * torch.randn(D))
        self.log_noise = nn.Parameter(torch.tensor(-0.5))
        self.guide = nn.Linear(D, 2 * D)
        self.num_particles = num_particles

    def guide_at(self, x: Tensor) -> vt.DiagNormal:
        loc, raw = self.guide(x).chunk(2, dim=-1)
        return vt.DiagNormal(loc, F.softplus(raw) + 1e-3)

    def log_joint(self, x: Tensor):
        def f(z: Tensor) -> Tensor:  # z [K, B, D] -> [K, B]
            noise_var = torch.exp(2 * self.log_noise)
            return normal_log_prob(z, self.prior_mean, torch.ones(())) + normal_log_prob(x, z, noise_var)

        return f

    def forward(self, x: Tensor) -> vt.LossOutput:
        return vt.loss(self.log_joint(x), self.guide_at(x), self.num_particles)

    def log_evidence(self, x: Tensor) -> Tensor:
        """``[B]`` exact ``log p(x_i)``."""
        return normal_log_prob(x, self.prior_mean, 1 + torch.exp(2 * self.log_noise))

    def predict(self, x: Tensor) -> Tensor:
        """``[B, D]`` the guide's posterior mean of ``z``."""
        return self.guide_at(x).mean


def toy_data(n: int = 24) -> Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, D, generator=g) * 1.5 + 0.3


class TestGaussianMeanProtocol(ModelTestCase):
    batch_size = 8

    def make_model(self):
        return GaussianMean()

    def make_data(self):
        return toy_data()

    def exact_log_evidence(self, model, batch):
        return model.log_evidence(batch)

    def predict_args(self, batch):
        return (batch,)


# ----- each test of the base class fails on a model that breaks its rule ----------------


class CheatingBound(GaussianMean):
    """Adds 20 nats to the log-joint without normalizing: the 'bound' passes log p(x)
    (the toy's ELBO gap at initialization is a few nats)."""

    def log_joint(self, x):
        inner = super().log_joint(x)
        return lambda z: inner(z) + 20.0


class DeadParameter(GaussianMean):
    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(3))


class ScalarLoss(GaussianMean):
    def forward(self, x):
        return super().forward(x).loss


class WrongScale(GaussianMean):
    """Returns the full-data sum instead of the per-datum mean (the old N/B convention)."""

    def forward(self, x):
        out = super().forward(x)
        return vt.LossOutput(out.loss * 100.0, out.bound, None, None)


class CountingState(GaussianMean):
    """Extra state that changes every step but that load_state_dict ignores: resume cannot restore it."""

    def __init__(self):
        super().__init__()
        self.calls = int(torch.randint(100, ()))  # differs between models built from different seeds

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return vt.LossOutput(out.loss + 0.0 * self.calls, out.bound, None, None)

    def get_extra_state(self):
        return {"calls": self.calls}

    def set_extra_state(self, state):
        pass  # the bug: forgets to restore


class NoPredict(GaussianMean):
    predict = None


def run(case_cls, model_cls, test: str, **attrs):
    case = type("Case", (case_cls,), {"make_model": lambda self: model_cls(), **attrs})()
    getattr(case, test)()


@pytest.mark.parametrize(
    "model_cls, test, message",
    [
        (CheatingBound, "test_bound_respects_exact_log_evidence", "lies above the exact log evidence"),
        (DeadParameter, "test_every_parameter_gets_a_finite_gradient", "unused"),
        (ScalarLoss, "test_forward_returns_loss_output", "must return a vitorch.LossOutput"),
        (WrongScale, "test_forward_returns_loss_output", "loss must equal -mean(bound)"),
        (CountingState, "test_checkpoint_resume_is_bit_identical", "_extra_state"),
        (CountingState, "test_state_dict_round_trip", "_extra_state"),
        (NoPredict, "test_has_predict", "has no predict method"),
    ],
)
def test_each_check_catches_its_bug(model_cls, test, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        run(TestGaussianMeanProtocol, model_cls, test)


def test_no_grad_parameters_opts_out_and_rejects_unknown_names():
    run(
        TestGaussianMeanProtocol,
        DeadParameter,
        "test_every_parameter_gets_a_finite_gradient",
        no_grad_parameters=("unused",),
    )
    with pytest.raises(AssertionError, match="does not have"):
        run(
            TestGaussianMeanProtocol,
            GaussianMean,
            "test_every_parameter_gets_a_finite_gradient",
            no_grad_parameters=("typo",),
        )


def test_the_bound_test_skips_without_an_exact_evidence():
    case = type("Case", (ModelTestCase,), {"make_model": lambda s: GaussianMean(), "make_data": lambda s: toy_data()})()
    with pytest.raises(pytest.skip.Exception):
        case.test_bound_respects_exact_log_evidence()


def test_bound_test_has_power_at_the_posterior():
    """The bound test's threshold is far below the toy's gap at initialization, and the
    bound test still passes when q is the exact posterior (bound = log evidence, zero variance)."""
    model = GaussianMean()
    x = toy_data()
    with torch.no_grad():
        var = 1 / (1 + 1 / torch.exp(2 * model.log_noise))  # posterior variance of z_i
        # posterior mean = var * (m + x / s^2): the guide's affine map reproduces it exactly.
        a = var / torch.exp(2 * model.log_noise)
        model.guide.weight.zero_()
        model.guide.weight[:D].copy_(a * torch.eye(D))
        model.guide.bias[:D].copy_(var * model.prior_mean)
        raw = torch.log(torch.expm1(var.sqrt() - 1e-3))
        model.guide.bias[D:].fill_(float(raw))
        out = model(x)
    torch.testing.assert_close(out.bound, model.log_evidence(x), rtol=0, atol=1e-12)
    case = type("Case", (TestGaussianMeanProtocol,), {"make_model": lambda s: model})()
    case.test_bound_respects_exact_log_evidence()
