"""Property-based sweep: every family and every objective/estimator pair under hostile input.

TESTING.md families 3, 11 and 19.  Hypothesis draws a family, a dtype (float16/32/64,
an integer dtype, float32 mixed with float64), a batch shape (empty, 0-d, small),
an event size (0 included) and non-finite values in a parameter, in a ``log_prob``
value or in the log-joint, and each case must end one of two ways:

* a result of the right shape whose entries are finite, or
* a ``ValueError`` / ``TypeError`` whose message names the culprit,

never a silent NaN, a wrong shape or an obscure torch error.  The outcome is
predicted from the input (an integer dtype must raise ``TypeError``, a NaN scale
``ValueError``, ...), so the test also catches a check that stops firing.

One documented exception: a NaN returned by the log-joint propagates to the loss
(NaN in, NaN out), which :func:`vitorch.fit`'s non-finite guard reports with the
step; ``+inf`` is always a model bug and raises at once, ``-inf`` is a particle of
zero weight (the datum's bound is the finite floor).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vitorch as vt

O, E = vt.objectives, vt.estimators

VECTOR = ("DiagNormal", "FullRankNormal", "LowRankNormal", "Dirichlet", "RSVIDirichlet", "Flow")
SCALAR = ("Gamma", "RSVIGamma", "Beta", "RSVIBeta")
FAMILIES = VECTOR + SCALAR
DTYPES = ("float16", "float32", "float64", "int64", "mixed")
FLOATS = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
POISONS = (None, math.nan, math.inf, -math.inf)


def _raw(name: str, batch: tuple[int, ...], d: int) -> dict[str, torch.Tensor]:
    """Valid float64 parameters; the vector families' event is ``[d]``, the scalar ones' batch ends in ``d``."""
    shape = (*batch, d)
    if name == "DiagNormal":
        return {"loc": 0.1 * torch.ones(shape), "scale": torch.ones(shape)}
    if name == "FullRankNormal":
        tril = torch.eye(d) + 0.2 * torch.ones(d, d).tril(-1)
        return {"loc": 0.1 * torch.ones(shape), "scale_tril": tril.expand(*batch, d, d).clone()}
    if name == "LowRankNormal":
        return {
            "loc": 0.1 * torch.ones(shape),
            "cov_factor": 0.5 * torch.ones(*shape, 1),
            "cov_diag": torch.ones(shape),
        }
    if name in ("Dirichlet", "RSVIDirichlet"):
        return {"concentration": torch.full(shape, 1.5)}
    if name == "Flow":
        return {"loc": torch.zeros(shape), "scale": torch.ones(shape)}
    first, second = ("concentration", "rate") if "Gamma" in name else ("concentration1", "concentration0")
    return {first: torch.full(shape, 1.5), second: torch.full(shape, 2.0)}


def _make(name: str, params: dict[str, torch.Tensor]):
    # validate_args explicit: torch.compile turns torch's default off for the whole process.
    if name == "Flow":
        d = params["loc"].shape[-1] if params["loc"].dim() else 1
        base = vt.DiagNormal(**params, validate_args=True)
        return vt.Flow(base, [vt.flows.ElementwiseAffine(d, hidden=(4,))], validate_args=True)
    return getattr(vt, name)(**params, validate_args=True)


def _event(name: str, d: int) -> tuple[int, ...]:
    return (d,) if name in VECTOR else ()


def _batch(name: str, batch: tuple[int, ...], d: int) -> tuple[int, ...]:
    return batch if name in VECTOR else (*batch, d)


def _params(name, batch, d, dtype, poison, zero_dim):
    raw = _raw(name, batch, d)
    if zero_dim:  # 0-d parameters: a scalar family with batch (), a vector family without its event
        raw = {k: v.reshape(-1)[0].clone() if v.numel() else torch.tensor(1.0) for k, v in raw.items()}
    poisoned = None
    if poison is not None:
        key = next(iter(raw)) if name != "FullRankNormal" else "scale_tril"
        if raw[key].numel():
            raw[key].view(-1)[0] = poison
            poisoned = key
    if dtype == "int64":
        raw = {k: v.to(torch.int64) if not v.isnan().any() else v for k, v in raw.items()}
    elif dtype == "mixed":
        keys = list(raw)
        raw = {k: v.to(torch.float32 if k == keys[0] else torch.float64) for k, v in raw.items()}
    else:
        raw = {k: v.to(FLOATS[dtype]) for k, v in raw.items()}
    return raw, poisoned


def _expected_error(name, raw, d, poisoned, zero_dim):
    """``(exception type, regex)`` the construction must raise, or ``None``."""
    if any(not v.is_floating_point() for v in raw.values()):
        return TypeError, r"must be a floating-point tensor"
    if len({v.dtype for v in raw.values() if v.dim() > 0}) > 1:
        return TypeError, r"must share one floating dtype"
    if zero_dim and name in VECTOR:
        return ValueError, r"dimension|event|\(\)"
    if d == 0 and name in VECTOR:
        return ValueError, r"event of size 0"
    if poisoned is not None:
        return ValueError, poisoned
    return None


def _all_finite(*tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


shapes = st.sampled_from([(), (0,), (2,), (1, 2)])
sizes = st.sampled_from([0, 1, 3])


@given(
    name=st.sampled_from(FAMILIES),
    dtype=st.sampled_from(DTYPES),
    batch=shapes,
    d=sizes,
    poison=st.sampled_from(POISONS),
    zero_dim=st.booleans(),
    value_poison=st.sampled_from(POISONS),
)
def test_family_operations_are_finite_or_refused_by_name(name, dtype, batch, d, poison, zero_dim, value_poison):
    raw, poisoned = _params(name, batch, d, dtype, poison, zero_dim)
    expected = _expected_error(name, raw, d, poisoned, zero_dim)
    if expected is not None:
        with pytest.raises(expected[0], match=expected[1]):
            _make(name, raw)
        return
    q = _make(name, raw)
    batch_shape, event = tuple(q.batch_shape), tuple(q.event_shape)
    if not zero_dim:
        assert batch_shape == _batch(name, batch, d) and event == _event(name, d)
    K = 3
    z, log_q = q.rsample_and_log_prob((K,))
    assert z.shape == (K, *batch_shape, *event) and log_q.shape == (K, *batch_shape)
    assert _all_finite(z, log_q)
    lp = q.log_prob(z)
    assert lp.shape == (K, *batch_shape) and _all_finite(lp)
    zs, log_qs = q.rsample_and_stopped_log_prob((K,))
    assert log_qs.shape == (K, *batch_shape) and _all_finite(zs, log_qs)
    if name != "Flow":  # a flow has no closed-form entropy (torch's NotImplementedError, by contract)
        entropy = q.entropy()
        assert entropy.shape == batch_shape and _all_finite(entropy)
    if value_poison is not None and z.numel():
        bad = z.detach().clone(memory_format=torch.contiguous_format)
        bad.view(-1)[0] = value_poison
        with pytest.raises(ValueError, match="support"):
            q.log_prob(bad)
    # A value that does not broadcast: a wrong event size, or a batch size >= 2 plus one.
    if event or any(b >= 2 for b in batch_shape):
        wrong = (event[0] + 1,) if event else tuple(b + 1 if b >= 2 else b for b in batch_shape)
        with pytest.raises(ValueError, match="shape"):
            q.log_prob(torch.full((5, *batch_shape[:-1], *wrong) if event else (5, *wrong), 0.5, dtype=z.dtype))


PAIRS = [
    (o, e)
    for o in (O.elbo, O.iwae, O.miwae(2), O.ciwae(0.3), O.renyi(0.5), O.renyi(2.0), O.cubo(2), O.piwae(2), O.vis())
    for e in (E.reparam, E.stl, E.dreg, E.score(), E.vimco)
]


def _log_joint(event: tuple[int, ...], poison):
    def log_joint(z):
        lp = -0.5 * z.pow(2)
        lp = lp.sum(-1) if event else lp
        if poison is not None:
            mask = torch.zeros_like(lp, dtype=torch.bool)
            if poison == -math.inf:
                mask[(slice(None),) + (0,) * (lp.dim() - 1)] = True  # every particle of datum 0 impossible
            else:
                mask.view(-1)[0] = True
            lp = torch.where(mask, poison, lp)
        return lp

    return log_joint


@given(
    name=st.sampled_from(FAMILIES),
    dtype=st.sampled_from(("float16", "float32", "float64")),
    batch=st.sampled_from([(0,), (2,), (1, 2)]),
    pair=st.sampled_from(range(len(PAIRS))),
    K=st.sampled_from([1, 2, 4]),
    poison=st.sampled_from(POISONS),
)
def test_every_objective_and_estimator_gives_a_finite_loss_or_a_clear_error(name, dtype, batch, pair, K, poison):
    objective, estimator = PAIRS[pair]
    raw, _ = _params(name, batch, 2, dtype, None, False)
    leaves = {k: v.clone().requires_grad_() for k, v in raw.items()}
    q = _make(name, leaves)
    event = tuple(q.event_shape)
    try:
        vt.check(q, K, objective, estimator)
    except ValueError as err:
        assert "invalid variational set-up" in str(err)
        with pytest.raises(ValueError, match="invalid variational set-up"):
            vt.loss(_log_joint(event, poison), q, K, objective, estimator)
        return
    if poison == math.inf:
        with pytest.raises(ValueError, match=r"\+inf for datum"):
            vt.loss(_log_joint(event, poison), q, K, objective, estimator)
        return
    out = vt.loss(_log_joint(event, poison), q, K, objective, estimator)
    assert out.bound.shape == tuple(q.batch_shape)
    if poison is not None and math.isnan(poison):
        assert torch.isnan(out.loss)  # NaN in, NaN out: fit's guard reports it with the step
        return
    assert torch.isfinite(out.loss) and _all_finite(out.bound)
    params = [v for v in leaves.values()]
    if name == "Flow":
        params += [p for t in q.transforms for p in t.parameters()]
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    assert all(g is None or _all_finite(g) for g in grads)


@pytest.mark.parametrize("objective", [O.renyi(0.5), O.cubo(2)], ids=str)
def test_half_precision_floor_of_the_power_bounds(objective):
    # A datum with every particle impossible: the floor must stay finite and be recognized as the floor.
    lw = torch.full((4, 2), -math.inf, dtype=torch.float16)
    lw[:, 1] = 0.0
    value = objective(lw)
    assert torch.isfinite(value).all()
    assert not bool(vt._logspace.finite_bound(value)[0]) and bool(vt._logspace.finite_bound(value)[1])


@given(
    dtype=st.sampled_from(("float16", "float32", "float64")),
    n=st.sampled_from([0, 1, 2, 5]),
    m=st.sampled_from([0, 1, 3]),
    d=st.sampled_from([1, 3]),
    kernel=st.sampled_from(["rbf", "imq"]),
    poison=st.sampled_from(POISONS),
)
def test_mmd_is_finite_or_refused_by_name(dtype, n, m, d, kernel, poison):
    z_q = torch.linspace(-1, 1, n * d).reshape(n, d).to(FLOATS[dtype])
    z_p = torch.linspace(0, 2, m * d).reshape(m, d).to(FLOATS[dtype])
    if poison is not None and z_q.numel():
        z_q[0, 0] = poison
    if n < 2 or m < 2:
        with pytest.raises(ValueError, match="at least 2 samples"):
            vt.objectives.mmd(z_q, z_p, kernel)
        return
    value = vt.objectives.mmd(z_q, z_p, kernel)
    assert value.shape == () and value.dtype == FLOATS[dtype]
    if poison is None:
        assert torch.isfinite(value)
    else:
        assert torch.isnan(value)  # a non-finite sample propagates as NaN, as a NaN log-joint does


@pytest.mark.parametrize("dtypes", [(torch.int64, torch.int64), (torch.float32, torch.float64)], ids=str)
def test_mmd_refuses_integer_and_mixed_dtypes_by_name(dtypes):
    with pytest.raises(TypeError, match=r"mmd: z_q and z_p must be floating-point tensors of one dtype"):
        vt.objectives.mmd(torch.ones(3, 2, dtype=dtypes[0]), torch.ones(3, 2, dtype=dtypes[1]))
