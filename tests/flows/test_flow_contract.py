"""One contract over every transform (zuko's pattern; TESTING.md family 14).

Shapes with sample and batch dimensions; every parameter and the context receive a
gradient; the inverse round-trips; ``ladj`` equals ``slogdet`` of the autograd
Jacobian; the inverse is differentiable with the right gradient (``gradcheck``,
which covers the implicit gradients of the Newton-solved inverses); train and eval
modes agree; a ``state_dict`` round trip keeps ``log_prob``.  Deterministic checks use
float64 round-off tolerances; stochastic ones are in ``test_density.py``.
"""

from __future__ import annotations

import io

import pytest
import torch
from flow_cases import CONDITIONAL, NAMES, WITH_PARAMS, make
from torch.func import functional_call

import vitorch as vt
from vitorch.families.flow import Flow
from vitorch.families.gaussian import DiagNormal

D, C = 3, 2
ATOL = 1e-9  # float64 with O(10) operations per layer and a few Newton solves: round-off is ~1e-14


def _inputs(shape=(4, 3)) -> torch.Tensor:
    return torch.randn(*shape, D)


def _context(conditional: bool, batch=(3,)):
    return torch.randn(*batch, C, requires_grad=True) if conditional else None


def _cases():
    return [(n, False) for n in NAMES] + [(n, True) for n in CONDITIONAL]


def _ids():
    return [f"{n}-{'cond' if c else 'plain'}" for n, c in _cases()]


@pytest.mark.parametrize(("name", "conditional"), _cases(), ids=_ids())
def test_shapes_and_gradients(name, conditional):
    t = make(name, D, C if conditional else 0)
    ctx = _context(conditional)
    x = _inputs().requires_grad_()
    y, ladj = t.call_and_ladj(x, ctx)
    assert y.shape == (4, 3, D) and ladj.shape == (4, 3)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.pow(2).sum() + ladj.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in t.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets a zero gradient"
    if ctx is not None:
        assert ctx.grad is not None and ctx.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "conditional"), _cases(), ids=_ids())
def test_inverse_round_trip(name, conditional):
    t = make(name, D, C if conditional else 0)
    ctx = _context(conditional)
    x = _inputs()
    with torch.no_grad():
        y, ladj = t.call_and_ladj(x, ctx)
        x_back, ladj_inv = t.inverse_and_ladj(y, ctx)
    torch.testing.assert_close(x_back, x, atol=ATOL, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("name", "conditional"), _cases(), ids=_ids())
def test_ladj_matches_slogdet_of_jacobian(name, conditional):
    t = make(name, D, C if conditional else 0)
    ctx = _context(conditional, batch=())
    ctx = None if ctx is None else ctx.detach()
    for x in _inputs(shape=(5,)):
        jac = torch.autograd.functional.jacobian(lambda v: t(v, ctx), x)
        _, ladj = t.call_and_ladj(x, ctx)
        torch.testing.assert_close(ladj.detach(), torch.linalg.slogdet(jac)[1], atol=ATOL, rtol=0)


@pytest.mark.parametrize(("name", "conditional"), _cases(), ids=_ids())
def test_inverse_gradient_by_finite_differences(name, conditional):
    """gradcheck of the inverse with respect to y, the context and (small transforms) the parameters."""
    t = make(name, D, C if conditional else 0)
    ctx = _context(conditional, batch=(2,))
    ctx = None if ctx is None else ctx.detach().requires_grad_()
    with torch.no_grad():
        y = t(torch.randn(2, D), ctx)
    params = dict(t.named_parameters())
    small = sum(p.numel() for p in params.values()) <= 120
    names = list(params) if small else []

    def inverse(y, ctx, *values):
        return functional_call(_Inverse(t), {f"t.{k}": v for k, v in zip(names, values)}, (y, ctx))

    values = [params[n].detach().clone().requires_grad_() for n in names]
    inputs = (y.requires_grad_(), ctx, *values)
    assert torch.autograd.gradcheck(inverse, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


class _Inverse(torch.nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, y, ctx):
        return self.t.inverse_and_ladj(y, ctx)


@pytest.mark.parametrize(("name", "conditional"), _cases(), ids=_ids())
def test_train_and_eval_agree(name, conditional):
    t = make(name, D, C if conditional else 0)
    ctx = _context(conditional)
    x = _inputs()
    with torch.no_grad():
        t.train()
        y_train, l_train = t.call_and_ladj(x, ctx)
        t.eval()
        y_eval, l_eval = t.call_and_ladj(x, ctx)
    assert torch.equal(y_train, y_eval) and torch.equal(l_train, l_eval)


@pytest.mark.parametrize(("name", "conditional"), _cases(), ids=_ids())
def test_state_dict_round_trip_keeps_log_prob(name, conditional):
    c = C if conditional else 0
    ctx = None if not conditional else torch.randn(3, C)
    stack = [make("elementwise_affine", D), make(name, D, c)]
    base = DiagNormal(torch.zeros(D), torch.ones(D))
    flow = Flow(base, stack, ctx)
    z = flow.sample((5,))
    log_q = flow.log_prob(z)

    buffer = io.BytesIO()
    torch.save(torch.nn.ModuleList(stack).state_dict(), buffer)
    buffer.seek(0)
    fresh = [make("elementwise_affine", D), make(name, D, c)]
    fresh_flow = Flow(base, fresh, ctx)
    if any(p.numel() for p in fresh[1].parameters()) or list(fresh[1].buffers()):
        assert not torch.allclose(fresh_flow.log_prob(z), log_q), "the fresh copy must differ before loading"
    torch.nn.ModuleList(fresh).load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fresh_flow.log_prob(z), log_q, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_bad_dimension_is_a_value_error(name):
    t = make(name, D)
    with pytest.raises(ValueError, match="must end in"):
        t(torch.randn(4, D + 1))


def test_coupling_flows_move_between_dtypes_like_any_module():
    # Coupling's own method once shadowed nn.Module._apply, so .double() and .to() raised.
    for flow in (vt.flows.AffineCoupling(4), vt.flows.SplineCoupling(4)):
        flow = flow.double()
        assert all(p.dtype == torch.float64 for p in flow.parameters())
        x = torch.randn(3, 4, dtype=torch.float64)
        y, ladj = flow.call_and_ladj(x)
        assert y.dtype == torch.float64 and ladj.shape == (3,)
