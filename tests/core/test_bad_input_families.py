"""Bad input to every variational family: a clear error naming the culprit, or a correct result.

TESTING.md family 19.  Each case here once ended in an obscure torch error or a
silent wrong result:

* integer parameters (``"normal_kernel_cpu" not implemented for 'Long'`` at the first
  draw) and float32 mixed with float64 (``expected m1 and m2 to have the same dtype``)
  now raise ``TypeError`` at construction, naming the parameters;
* an empty batch gave reshape errors in ``LowRankNormal`` and in ``log_prob``: an empty
  family now draws and evaluates empty tensors (``vitorch.loss`` refuses it by name),
  and an event of size 0 raises ``ValueError``;
* half precision raised ``NotImplementedError`` in ``FullRankNormal.log_prob``,
  ``LowRankNormal`` and the implicit Gamma, Beta and Dirichlet: those steps now run in
  float32 and round back, so the result is the float32 one to half's rounding;
* ``DiagNormal.log_prob(inf)`` returned ``-inf`` where Beta and Dirichlet raised and
  Gamma returned NaN: every family's support now excludes ``±inf``, so all raise the
  support's ``ValueError`` when validating.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import vitorch as vt

D = 3
# Explicit, because torch.compile turns torch's default validation off for the whole process.
V = {"validate_args": True}


def _gaussians(dtype=torch.float64, batch=(2,)):
    loc = torch.zeros(*batch, D, dtype=dtype)
    tril = torch.eye(D, dtype=dtype) + 0.3 * torch.ones(D, D, dtype=dtype).tril(-1)
    return {
        "DiagNormal": lambda: vt.DiagNormal(loc, torch.ones(*batch, D, dtype=dtype), **V),
        "FullRankNormal": lambda: vt.FullRankNormal(loc, tril, **V),
        "LowRankNormal": lambda: vt.LowRankNormal(
            loc, 0.5 * torch.ones(*batch, D, 1, dtype=dtype), torch.ones(*batch, D, dtype=dtype), **V
        ),
    }


def _positives(dtype=torch.float64, batch=(2,)):
    a = torch.full((*batch, D), 1.5, dtype=dtype)
    b = torch.full((*batch, D), 2.0, dtype=dtype)
    return {
        "Gamma": lambda: vt.Gamma(a, b, **V),
        "RSVIGamma": lambda: vt.RSVIGamma(a, b, **V),
        "Beta": lambda: vt.Beta(a, b, **V),
        "RSVIBeta": lambda: vt.RSVIBeta(a, b, **V),
        "Dirichlet": lambda: vt.Dirichlet(a, **V),
        "RSVIDirichlet": lambda: vt.RSVIDirichlet(a, **V),
    }


def _all(dtype=torch.float64, batch=(2,)):
    return {**_gaussians(dtype, batch), **_positives(dtype, batch)}


# ----------------------------------------------------------------------------- dtypes

# (family, constructor, parameter names): integer tensors for every parameter.
CONSTRUCTORS = {
    "DiagNormal": (vt.DiagNormal, ("loc", "scale"), ((D,), (D,))),
    "FullRankNormal": (vt.FullRankNormal, ("loc", "scale_tril"), ((D,), (D, D))),
    "LowRankNormal": (vt.LowRankNormal, ("loc", "cov_factor", "cov_diag"), ((D,), (D, 1), (D,))),
    "Gamma": (vt.Gamma, ("concentration", "rate"), ((D,), (D,))),
    "RSVIGamma": (vt.RSVIGamma, ("concentration", "rate"), ((D,), (D,))),
    "Beta": (vt.Beta, ("concentration1", "concentration0"), ((D,), (D,))),
    "RSVIBeta": (vt.RSVIBeta, ("concentration1", "concentration0"), ((D,), (D,))),
    "Dirichlet": (vt.Dirichlet, ("concentration",), ((D,),)),
    "RSVIDirichlet": (vt.RSVIDirichlet, ("concentration",), ((D,),)),
}


def _valid(shape, dtype):
    return (
        torch.eye(shape[0], dtype=dtype) if len(shape) == 2 and shape[0] == shape[1] else torch.ones(shape, dtype=dtype)
    )


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_parameters_raise_a_type_error_naming_the_parameter(name, dtype):
    cls, names, shapes = CONSTRUCTORS[name]
    args = [_valid(s, torch.float64) for s in shapes]
    args[-1] = _valid(shapes[-1], dtype)
    with pytest.raises(TypeError, match=rf"{name}: parameter {names[-1]} must be a floating-point tensor; got {dtype}"):
        cls(*args)


@pytest.mark.parametrize("name", [n for n, (_, names, _) in CONSTRUCTORS.items() if len(names) > 1])
def test_mixed_float32_and_float64_parameters_raise_naming_each(name):
    cls, names, shapes = CONSTRUCTORS[name]
    args = [_valid(s, torch.float32) for s in shapes]
    args[-1] = _valid(shapes[-1], torch.float64)
    pattern = (
        rf"{name}: parameters must share one floating dtype; got {names[0]} torch.float32.*{names[-1]} torch.float64"
    )
    with pytest.raises(TypeError, match=pattern):
        cls(*args)


def test_zero_dimensional_tensors_and_numbers_take_the_parameters_dtype():
    # As in torch's type promotion: a 0-d tensor or a number does not set the dtype.
    q = vt.Gamma(torch.ones(D, dtype=torch.float32), torch.tensor(2.0, dtype=torch.float64))
    assert q.rate.dtype == torch.float32 and q.rsample((2,)).dtype == torch.float32
    q = vt.Beta(torch.ones(D, dtype=torch.float32), 2.0)
    assert q.concentration0.dtype == torch.float32


@pytest.mark.parametrize("name", list(_gaussians()))
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.int64])
def test_log_prob_takes_a_value_of_another_dtype_in_the_familys(name, value_dtype):
    q = _gaussians()[name]()
    value = torch.ones(2, D, dtype=value_dtype)
    expected = q.log_prob(torch.ones(2, D, dtype=torch.float64))
    out = q.log_prob(value)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------- half precision

HALF_TOL = 4 * 2.0**-11  # a few roundings to float16's 11-bit significand, relative


@pytest.mark.parametrize("name", list(_all()))
def test_half_precision_draws_densities_and_gradients(name):
    families = _all(torch.float16)
    q = families[name]()
    z, log_q = q.rsample_and_log_prob((4,))
    assert z.dtype == log_q.dtype == torch.float16
    assert torch.isfinite(z).all() and torch.isfinite(log_q).all()
    # The same parameters in float32 (exact), evaluated at the same z: only roundings differ.
    q32 = _all(torch.float32)[name]()
    q32._validate_args = False  # a float16 draw is a simplex only to float16's rounding
    reference = q32.log_prob(z.float())
    got = q.log_prob(z)
    assert got.dtype == torch.float16
    assert ((got.float() - reference).abs() <= HALF_TOL * (reference.abs() + D)).all(), (got, reference)
    entropy = q.entropy()
    assert entropy.dtype == torch.float16 and torch.isfinite(entropy).all()


@pytest.mark.parametrize("name", ["FullRankNormal", "LowRankNormal", "Gamma", "Beta", "Dirichlet"])
def test_half_precision_gradients_are_finite(name):
    leaf = torch.tensor(1.5, dtype=torch.float16, requires_grad=True)
    base = _all(torch.float16)[name]()
    params = {k: getattr(base, k) for k in base.arg_constraints}
    first = next(iter(params))
    params[first] = params[first] * leaf
    q = type(base)(**params)
    z, log_q = q.rsample_and_log_prob((4,))
    (g,) = torch.autograd.grad((z.float().sum() + log_q.float().sum()), leaf)
    assert torch.isfinite(g)


# ----------------------------------------------------------------------------- empty shapes


@pytest.mark.parametrize("name", list(_all()))
def test_an_empty_batch_gives_empty_results_and_loss_refuses_it(name):
    q = _all(batch=(0,))[name]()
    batch = tuple(q.batch_shape)  # (0,) for the vector families, (0, D) for the scalar ones
    assert batch[0] == 0
    z = q.rsample((3,))
    assert z.shape == (3, *batch, *q.event_shape)
    assert q.log_prob(z).shape == (3, *batch)
    z, log_q = q.rsample_and_log_prob((3,))
    assert log_q.shape == (3, *batch)
    z, log_q = q.rsample_and_stopped_log_prob((3,))
    assert log_q.shape == (3, *batch)
    assert q.entropy().shape == batch
    with pytest.raises(ValueError, match=rf"empty batch {re.escape(str(batch))}"):
        vt.loss(lambda z: torch.zeros(z.shape[: 1 + len(q.batch_shape)]), q, 3)


@pytest.mark.parametrize("name", list(_all()))
def test_zero_samples_give_empty_results(name):
    q = _all()[name]()
    batch = tuple(q.batch_shape)
    z, log_q = q.rsample_and_log_prob((0,))
    assert z.shape == (0, *batch, *q.event_shape) and log_q.shape == (0, *batch)
    assert q.log_prob(z).shape == (0, *batch)


EMPTY_EVENTS = {
    "DiagNormal": lambda: vt.DiagNormal(torch.zeros(2, 0), torch.ones(2, 0)),
    "FullRankNormal": lambda: vt.FullRankNormal(torch.zeros(2, 0), torch.ones(0, 0)),
    "LowRankNormal": lambda: vt.LowRankNormal(torch.zeros(0), torch.ones(0, 1), torch.ones(0)),
    "Dirichlet": lambda: vt.Dirichlet(torch.ones(2, 0)),
    "RSVIDirichlet": lambda: vt.RSVIDirichlet(torch.ones(0)),
    "Flow": lambda: vt.Flow(vt.DiagNormal(torch.zeros(0), torch.ones(0), validate_args=False), []),
}


@pytest.mark.parametrize("name", list(EMPTY_EVENTS))
def test_an_event_of_size_zero_raises_naming_it(name):
    with pytest.raises(ValueError, match=r"event of size 0"):
        EMPTY_EVENTS[name]()


# ----------------------------------------------------------------------------- infinite values


def _support_cases():
    cases = {}
    for name, make in _all().items():
        cases[name] = make
    cases["Flow"] = lambda: vt.Flow(
        vt.DiagNormal(torch.zeros(D), torch.ones(D)), [vt.flows.ElementwiseAffine(D)], validate_args=True
    )
    return cases


@pytest.mark.parametrize("name", list(_support_cases()))
@pytest.mark.parametrize("sign", [1, -1])
def test_log_prob_of_an_infinite_value_raises_the_support_error_in_every_family(name, sign):
    q = _support_cases()[name]()
    value = q.sample()
    value[..., 0] = sign * math.inf
    with pytest.raises(ValueError, match=r"support"):
        q.log_prob(value)


def test_validate_args_false_skips_the_support_check():
    q = vt.DiagNormal(torch.zeros(D), torch.ones(D), validate_args=False)
    assert q.log_prob(torch.full((D,), math.inf)) == -math.inf


@pytest.mark.parametrize("name", list(_support_cases()))
def test_the_finite_supports_keep_torchs_bijections(name):
    # biject_to(q.support) maps unconstrained reals into the (now finite-only) support, as before.
    q = _support_cases()[name]()
    t = torch.distributions.biject_to(q.support)
    x = torch.randn(4, *t.inverse_shape(q.event_shape))
    assert bool(q.support.check(t(x)).all())
    assert type(torch.distributions.transform_to(q.support)(x)) is torch.Tensor
