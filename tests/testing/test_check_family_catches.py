"""check_family: each check fails on a family that breaks its rule, naming the check.

Each broken family is a small subclass of a correct one with one deliberate bug, so
these tests show the battery has the power to see that bug (and say which check saw it).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import vitorch as vt
from vitorch import flows
from vitorch.testing import FamilyCheckError, check_family

B, D = 3, 2


def params():
    g = torch.Generator().manual_seed(5)
    loc = torch.randn(B, D, generator=g).requires_grad_(True)
    scale = (0.5 + torch.rand(B, D, generator=g)).requires_grad_(True)
    return loc, scale


class LogProbSumsBatch(vt.DiagNormal):
    def log_prob(self, value):
        return super().log_prob(value).sum(-1)


class ForgetsLogDet(vt.DiagNormal):
    def rsample_and_log_prob(self, sample_shape=()):
        z, log_q = super().rsample_and_log_prob(sample_shape)
        return z, log_q + self.scale.log().sum(-1)


class DetachedLogDet(vt.DiagNormal):
    """Right value, wrong gradient: the log-determinant is cut from the graph."""

    def rsample_and_log_prob(self, sample_shape=()):
        z, log_q = super().rsample_and_log_prob(sample_shape)
        log_det = self.scale.log().sum(-1)
        return z, log_q + log_det - log_det.detach()


class DetachDoesNotStop(vt.DiagNormal):
    def detach(self):
        return self


class DetachMovesTheMean(vt.DiagNormal):
    def detach(self):
        return vt.DiagNormal(self.loc.detach() + 0.1, self.scale.detach())


class NoPathToLoc(vt.DiagNormal):
    def rsample(self, sample_shape=()):
        return super().rsample(sample_shape) - self.loc + self.loc.detach()

    def rsample_and_log_prob(self, sample_shape=()):
        z = self.rsample(sample_shape)
        return z, self.log_prob(z).detach() - self.scale.log().sum(-1) + self.scale.log().sum(-1).detach()


class DetachedLoc(vt.DiagNormal):
    def rsample_and_log_prob(self, sample_shape=()):
        z, log_q = super().rsample_and_log_prob(sample_shape)
        return z.detach() + self.scale - self.scale.detach(), log_q


class ExpandIgnoresShape(vt.DiagNormal):
    def expand(self, batch_shape, _instance=None):
        return self


class WrongMean(vt.DiagNormal):
    @property
    def mean(self):
        return self.loc + 0.1


class RandomShift(flows.Transform):
    """A shift drawn at construction and kept as a plain attribute: not saved with the state."""

    def __init__(self, dim):
        super().__init__(dim)
        self.scale = nn.Parameter(torch.zeros(dim))
        self.shift = torch.randn(dim)

    def call_and_ladj(self, x, context=None):
        return x * self.scale.exp() + self.shift, self.scale.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, y, context=None):
        return (y - self.shift) * (-self.scale).exp(), self.scale.sum().expand(y.shape[:-1])


def family(cls):
    return lambda: cls(*params())


@pytest.mark.parametrize(
    "make, check, message",
    [
        (family(LogProbSumsBatch), "shapes", "log_prob of a sample"),
        (family(ForgetsLogDet), "rsample_and_log_prob", "log_q against log_prob(z)"),
        (family(DetachedLogDet), "rsample_and_log_prob", "gradient of log_q against that of log_prob(z)"),
        (family(DetachDoesNotStop), "stopped", "carries gradient to the parameters"),
        (family(DetachMovesTheMean), "stopped", "stopped(q).log_prob(z) against q.log_prob(z)"),
        (family(NoPathToLoc), "gradients", "gives an all-zero gradient to ['params[0]']"),
        (family(DetachedLoc), "gradients", "gives no gradient to ['params[0]']"),
        (family(ExpandIgnoresShape), "expand", "expected batch (2, 3)"),
        (family(WrongMean), "mean", "standard errors from q.mean"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_each_check_catches_its_bug(make, check, message):
    def wrapped():
        q = make()
        return q, [q.loc, q.scale]

    with pytest.raises(FamilyCheckError, match=rf"check_family\[{check}\].*{re.escape(message)}"):
        check_family(wrapped, dtypes=(torch.float64,), checks=(check,))


def test_save_load_catches_state_outside_the_state_dict():
    def make():
        shift = RandomShift(D)
        base = vt.DiagNormal(torch.zeros(B, D), torch.ones(B, D))
        return vt.Flow(base, [shift]), shift

    with pytest.raises(FamilyCheckError, match=r"check_family\[save_load\]"):
        check_family(make, dtypes=(torch.float64,), checks=("save_load",))


def test_a_family_computed_from_a_module_gets_a_hint():
    def make():
        head = vt.DiagNormalHead(4, D)
        return head(torch.ones(B, 4)), head  # built once: loading into head cannot reach it

    with pytest.raises(FamilyCheckError, match=r"return \(module, context\)"):
        check_family(make, dtypes=(torch.float64,), checks=("save_load",))
    check_family(lambda: (vt.DiagNormalHead(4, D), torch.ones(B, 4)), dtypes=(torch.float64,))


def test_a_fixed_dtype_fails_the_float64_run():
    def make():
        loc = torch.zeros(B, D, dtype=torch.float32, requires_grad=True)
        return vt.DiagNormal(loc, torch.ones(B, D, dtype=torch.float32)), [loc]

    check_family(make, dtypes=(torch.float32,))
    with pytest.raises(FamilyCheckError, match=r"shapes\] DiagNormal in torch.float64: sample has dtype torch.float32"):
        check_family(make, dtypes=(torch.float64,))


def test_no_parameters_is_an_error_not_a_skip():
    with pytest.raises(FamilyCheckError, match=r"no parameters found"):
        check_family(lambda: vt.DiagNormal(torch.zeros(B, D), torch.ones(B, D)))


def test_bad_returns_and_options_are_named():
    with pytest.raises(TypeError, match="must return a family"):
        check_family(lambda: 3)
    with pytest.raises(TypeError, match="leaf tensors with requires_grad"):
        check_family(lambda: (vt.DiagNormal(torch.zeros(D), torch.ones(D)), [torch.zeros(D)]))
    with pytest.raises(ValueError, match="unknown checks"):
        check_family(family(vt.DiagNormal), checks=("shape",))


def test_the_callers_random_state_is_kept():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_family(family(vt.DiagNormal), dtypes=(torch.float64,), checks=("shapes", "gradients"))
    assert torch.equal(torch.rand(3), expected)


def test_the_mean_check_tolerance_is_derived_not_loose():
    """The mean check's threshold is the Bonferroni normal quantile of the stated rate (two-sided
    2e-7 over the B * D entries): with 10,000 draws of scale <= 1.5 (``params``), WrongMean's bias
    of 0.1 is beyond it, so the check has the power the test above relies on."""
    z = float(torch.special.ndtri(torch.tensor(1 - 2e-7 / (2 * B * D), dtype=torch.float64)))
    assert 5.2 < z < 6.0 and z * 1.5 / math.sqrt(10_000) < 0.1
