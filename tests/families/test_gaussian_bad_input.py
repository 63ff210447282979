"""Bad input to the Gaussian families and heads raises ValueError naming the culprit (TESTING.md family 19).

Every case passes ``validate_args=True`` explicitly, so that a test elsewhere that
changes torch's global default cannot turn these checks off.
"""

from __future__ import annotations

import math

import pytest
import torch

from vitorch.families import (
    DiagNormal,
    DiagNormalHead,
    FullRankNormal,
    FullRankNormalHead,
    LowRankNormal,
    LowRankNormalHead,
)

NAN, INF = math.nan, math.inf
ONES = torch.ones(3, dtype=torch.float64)
ZEROS = torch.zeros(3, dtype=torch.float64)


def _vec(*values):
    return torch.tensor(values, dtype=torch.float64)


def _tril(upper=0.0, diag=1.0):
    t = torch.eye(3, dtype=torch.float64)
    t[0, 2] = upper
    t[1, 1] = diag
    return t


def _factor(value):
    w = torch.ones(3, 2, dtype=torch.float64)
    w[1, 0] = value
    return w


# (constructor arguments, regex the message must match): each message names the
# parameter and the constraint it breaks.
BAD_PARAMETERS = {
    "diag scale zero": (DiagNormal, (ZEROS, _vec(1, 0, 1)), r"parameter scale .*PositiveFinite"),
    "diag scale negative": (DiagNormal, (ZEROS, _vec(1, -2, 1)), r"parameter scale .*PositiveFinite"),
    "diag scale inf": (DiagNormal, (ZEROS, _vec(1, INF, 1)), r"parameter scale .*PositiveFinite"),
    "diag scale nan": (DiagNormal, (ZEROS, _vec(1, NAN, 1)), r"parameter scale .*PositiveFinite"),
    "diag loc nan": (DiagNormal, (_vec(0, NAN, 0), ONES), r"parameter loc .*FiniteReal"),
    "diag loc inf": (DiagNormal, (_vec(0, -INF, 0), ONES), r"parameter loc .*FiniteReal"),
    "full upper triangle": (
        FullRankNormal,
        (ZEROS, _tril(upper=0.5)),
        r"parameter scale_tril .*lower triangular",
    ),
    "full zero diagonal": (
        FullRankNormal,
        (ZEROS, _tril(diag=0.0)),
        r"parameter scale_tril .*positive diagonal",
    ),
    "full negative diagonal": (
        FullRankNormal,
        (ZEROS, _tril(diag=-1.0)),
        r"parameter scale_tril .*positive diagonal",
    ),
    "full inf entry": (FullRankNormal, (ZEROS, _tril(diag=INF)), r"parameter scale_tril .*finite"),
    "full nan entry": (FullRankNormal, (ZEROS, _tril(diag=NAN)), r"parameter scale_tril .*LowerCholesky"),
    "full loc nan": (FullRankNormal, (_vec(NAN, 0, 0), _tril()), r"parameter loc .*FiniteReal"),
    "lowrank cov_diag zero": (
        LowRankNormal,
        (ZEROS, _factor(1), _vec(1, 0, 1)),
        r"parameter cov_diag .*PositiveFinite",
    ),
    "lowrank cov_diag inf": (
        LowRankNormal,
        (ZEROS, _factor(1), _vec(1, INF, 1)),
        r"parameter cov_diag .*PositiveFinite",
    ),
    "lowrank cov_diag nan": (
        LowRankNormal,
        (ZEROS, _factor(1), _vec(NAN, 1, 1)),
        r"parameter cov_diag .*PositiveFinite",
    ),
    "lowrank cov_factor nan": (
        LowRankNormal,
        (ZEROS, _factor(NAN), ONES),
        r"parameter cov_factor .*FiniteReal",
    ),
    "lowrank cov_factor inf": (
        LowRankNormal,
        (ZEROS, _factor(INF), ONES),
        r"parameter cov_factor .*FiniteReal",
    ),
    "lowrank loc nan": (LowRankNormal, (_vec(0, 0, NAN), _factor(1), ONES), r"parameter loc .*FiniteReal"),
    # One bad member of a batch, and a bad factor shared by a batch of means.
    "full one bad matrix in a batch": (
        FullRankNormal,
        (ZEROS, torch.stack([_tril(), _tril(upper=0.5), _tril()])),
        r"parameter scale_tril .*lower triangular",
    ),
    "full bad shared factor": (
        FullRankNormal,
        (torch.zeros(4, 3, dtype=torch.float64), _tril(diag=-1.0)),
        r"parameter scale_tril",
    ),
    "diag one bad scale in a batch": (
        DiagNormal,
        (ZEROS, torch.stack([ONES, _vec(1, 1, -1)])),
        r"parameter scale .*PositiveFinite.*-1\.0",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_bad_parameter_raises_naming_parameter_and_constraint(case):
    cls, args, pattern = BAD_PARAMETERS[case]
    with pytest.raises(ValueError, match=pattern):
        cls(*args, validate_args=True)


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_validate_args_false_skips_parameter_checks(case):
    cls, args, _ = BAD_PARAMETERS[case]
    q = cls(*args, validate_args=False)
    assert q.event_shape == (3,)


BAD_SHAPES = {
    "diag event": (DiagNormal, (torch.zeros(3), torch.ones(2)), [r"\(3,\)", r"\(2,\)"]),
    "diag batch": (DiagNormal, (torch.zeros(2, 3), torch.ones(4, 3)), [r"\(2, 3\)", r"\(4, 3\)"]),
    "diag scalar loc": (DiagNormal, (torch.tensor(0.0), torch.tensor(1.0)), [r"loc", r"\(\)"]),
    "full batch": (FullRankNormal, (torch.zeros(2, 3), torch.eye(3).expand(4, 3, 3)), [r"\(2, 3\)", r"\(4, 3, 3\)"]),
    "full event": (FullRankNormal, (torch.zeros(2), torch.eye(3)), [r"\(2,\)", r"\(3, 3\)"]),
    "full vector tril": (FullRankNormal, (torch.zeros(3), torch.ones(3)), [r"scale_tril", r"\(3,\)"]),
    "lowrank batch": (
        LowRankNormal,
        (torch.zeros(2, 3), torch.ones(4, 3, 1), torch.ones(3)),
        [r"\(2, 3\)", r"\(4, 3, 1\)"],
    ),
    "lowrank event": (LowRankNormal, (torch.zeros(3), torch.ones(3, 1), torch.ones(2)), [r"\(3,\)", r"\(2,\)"]),
    "lowrank factor rows": (LowRankNormal, (torch.zeros(3), torch.ones(2, 1), torch.ones(3)), [r"\(3,\)", r"\(2, 1\)"]),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_shapes_that_do_not_fit_raise_giving_the_shapes(case):
    cls, args, patterns = BAD_SHAPES[case]
    with pytest.raises(ValueError) as info:
        cls(*args, validate_args=True)
    for pattern in patterns:
        assert info.match(pattern)


def _families(validate_args=True):
    return [
        DiagNormal(torch.zeros(2, 3), torch.ones(3), validate_args=validate_args),
        FullRankNormal(torch.zeros(2, 3), torch.eye(3), validate_args=validate_args),
        LowRankNormal(torch.zeros(2, 3), torch.ones(3, 1), torch.ones(3), validate_args=validate_args),
    ]


@pytest.mark.parametrize("index", range(3))
def test_log_prob_rejects_bad_values(index):
    q = _families()[index]
    with pytest.raises(ValueError, match=r"support"):
        q.log_prob(torch.tensor([0.0, NAN, 0.0]))
    with pytest.raises(ValueError, match=r"event_shape.*\[4\].*\[3\]"):
        q.log_prob(torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[3, 3\].*\[2, 3\]"):
        q.log_prob(torch.zeros(3, 3))
    # The stopped-parameter copy keeps checking values.
    with pytest.raises(ValueError, match=r"support"):
        q.detach().log_prob(torch.tensor([0.0, NAN, 0.0]))


@pytest.mark.parametrize("index", range(3))
def test_validate_args_false_skips_value_checks(index):
    q = _families(validate_args=False)[index]
    assert q.log_prob(torch.tensor([0.0, NAN, 0.0])).isnan().all()


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: DiagNormalHead(0, 3), "in_features"),
        (lambda: FullRankNormalHead(4, 0), "event_size"),
        (lambda: DiagNormalHead(4, 3, min_scale=-1.0), "min_scale"),
        (lambda: DiagNormalHead(4, 3, min_scale=NAN), "min_scale"),
        (lambda: LowRankNormalHead(4, 3, rank=0), "rank"),
    ],
)
def test_heads_reject_bad_hyperparameters(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()
