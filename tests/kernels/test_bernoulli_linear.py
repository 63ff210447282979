"""``vitorch.kernels.bernoulli_linear_log_prob``: the fused backend against the reference.

As in flash-linear-attention's op tests, each backend runs on the same inputs, a random
upstream gradient is back-propagated, and the outputs and every input gradient are
compared; the hand-written backward also passes float64 ``gradcheck`` on odd sizes.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import vitorch.kernels as vk
from vitorch.kernels import bernoulli_linear
from vitorch.kernels.bernoulli_linear import reference

OP = vk.bernoulli_linear_log_prob


def _textbook(h, weight, bias, x):
    logits = F.linear(h, weight, bias)
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def _inputs(lead, batch, hidden, width, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, batch, hidden, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(width, hidden, generator=g, dtype=dtype).requires_grad_()
    bias = torch.randn(width, generator=g, dtype=dtype).requires_grad_()
    x = torch.bernoulli(torch.full((batch, width), 0.4, dtype=dtype), generator=g)
    return h, weight, bias, x


def test_reference_is_the_textbook_bernoulli_likelihood():
    h, weight, bias, x = _inputs((3,), 4, 5, 6)
    logits = F.linear(h, weight, bias)
    by_hand = (x * logits - F.softplus(logits)).sum(-1)  # sum_j x_j l_j - softplus(l_j)
    torch.testing.assert_close(reference.bernoulli_linear_log_prob(h, weight, bias, x), by_hand)
    torch.testing.assert_close(OP(h, weight, bias, x, backend="reference"), _textbook(h, weight, bias, x))


@pytest.mark.parametrize("lead", [(), (1,), (7,), (2, 3)])
def test_fused_gradcheck_float64(lead):
    h, weight, bias, x = _inputs(lead, 3, 5, 7)
    assert torch.autograd.gradcheck(lambda *a: OP(*a, x, backend="fused"), (h, weight, bias))


def _float32_bounds(h, weight, bias, x, up):
    """Rounding bounds of the float32 value and of the three input gradients.

    Each entry is a sum of ``n`` products (``n = D`` for the value and ``dh``, ``n = S*B``
    for ``dW`` and ``db``), computed by either backend in some order; its float32 error is
    at most ``gamma_{n+c} * sum |terms|`` (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2002, eq. 3.5), ``gamma_m = m u / (1 - m u)``, ``u = 2^-24``, with ``c = 8``
    covering the elementwise roundings (softplus, sigmoid, the residual, the factor ``g``).
    Two backends differ by at most twice that.
    """
    h, w, b, x, up = (t.detach().double() for t in (h, weight, bias, x, up))
    logits = F.linear(h, w, b)
    width, hidden = w.shape
    rows = (up.abs().unsqueeze(-1) * (torch.sigmoid(logits) - x).abs()).reshape(-1, width)  # |g r|, [S*B, D]
    terms = [
        ((x * logits).abs() + F.softplus(logits)).sum(-1),  # the value, n = D
        (rows @ w.abs()).reshape(h.shape),  # dh, n = D
        rows.T @ h.abs().reshape(-1, hidden),  # dW, n = S*B
        rows.sum(0),  # db, n = S*B
    ]
    u = 2.0**-24
    sizes = [width, width, rows.shape[0], rows.shape[0]]
    return [2 * (n + 8) * u / (1 - (n + 8) * u) * t for n, t in zip(sizes, terms)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(1, 1, 1, 1), (7, 5, 3, 127), (3, 2, 9, 1000)])
def test_fused_matches_reference_values_and_gradients(size, dtype):
    k, batch, hidden, width = size
    h, weight, bias, x = _inputs((k,), batch, hidden, width, dtype)
    x[0] = torch.rand(width, dtype=dtype)  # real-valued data use the same formula x l - softplus(l)
    got, want = OP(h, weight, bias, x, backend="fused"), OP(h, weight, bias, x, backend="reference")
    up = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    pairs = [(got, want)] + list(
        zip(torch.autograd.grad(got, (h, weight, bias), up), torch.autograd.grad(want, (h, weight, bias), up))
    )
    if dtype == torch.float64:  # rounding far below the default float64 tolerances
        for a, b in pairs:
            torch.testing.assert_close(a, b)
        return
    for (a, b), bound in zip(pairs, _float32_bounds(h, weight, bias, x, up)):
        assert ((a.detach().double() - b.detach().double()).abs() <= bound).all()


def test_fused_repeated_backward_and_frozen_inputs():
    # The first backward reuses the logits' buffer; a second one (retain_graph) must recompute them.
    h, weight, bias, x = _inputs((4,), 3, 5, 6)
    out = OP(h, weight, bias, x, backend="fused").sum()
    first = torch.autograd.grad(out, (h, weight, bias), retain_graph=True)
    second = torch.autograd.grad(out, (h, weight, bias))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Only some inputs needing a gradient (a frozen decoder layer).
    frozen = OP(h, weight.detach(), bias.detach(), x, backend="fused").sum()
    (g,) = torch.autograd.grad(frozen, h)
    torch.testing.assert_close(g, first[0])


def test_fused_has_no_silent_double_backward():
    h, weight, bias, x = _inputs((2,), 3, 4, 5)
    (g,) = torch.autograd.grad(OP(h, weight, bias, x, backend="fused").sum(), h, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_bad_input_names_the_culprit():
    h, weight, bias, x = _inputs((2,), 3, 4, 5)
    with pytest.raises(ValueError, match="do not fit"):
        OP(h, weight, bias, x[:, :4])
    with pytest.raises(ValueError, match="bias must be"):
        OP(h, weight, bias[:4], x)
    with pytest.raises(ValueError, match="dtypes differ"):
        OP(h, weight, bias, x.float())


def test_auto_follows_the_size_rule(monkeypatch):
    calls = []
    monkeypatch.setattr(bernoulli_linear.fused, "bernoulli_linear_log_prob", lambda *a: calls.append(1) or a[0].sum(-1))
    h, weight, bias, x = _inputs((2,), 3, 4, 5)
    OP(h, weight, bias, x)  # far below the rule: the reference
    assert calls == []
    monkeypatch.setattr(bernoulli_linear, "FUSED_MIN_NUMEL", h.numel())  # the largest input decides
    OP(h, weight, bias, x)
    assert calls == [1]


def test_auto_takes_the_reference_where_the_fused_backend_cannot_run(monkeypatch):
    monkeypatch.setattr(bernoulli_linear, "FUSED_MIN_NUMEL", 1)
    h, weight, bias, x = _inputs((2,), 3, 4, 5)
    want = _textbook(h, weight, bias, x)
    # Data requiring a gradient: the fused backward has none for it, the reference does.
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(OP(h, weight, bias, xg).sum(), xg)
    torch.testing.assert_close(gx, torch.autograd.grad(_textbook(h, weight, bias, xg).sum(), xg)[0])
    with pytest.raises(vk.KernelUnavailableError, match="x requires a gradient"):
        OP(h, weight, bias, xg, backend="fused")
    # Half precision: the reference only.
    with pytest.raises(vk.KernelUnavailableError, match="bfloat16"):
        OP(*(t.detach().bfloat16() for t in (h, weight, bias, x)), backend="fused")
    # torch.func transforms: the reference (the fused node has no batching rule).
    batched = torch.func.vmap(lambda hh: OP(hh, weight, bias, x))(h)
    torch.testing.assert_close(batched, want)
    g = torch.func.grad(lambda w: OP(h, w, bias, x).sum())(weight)
    torch.testing.assert_close(g, torch.autograd.grad(want.sum(), weight)[0])


def test_autocast_forms_the_density_in_the_data_dtype(monkeypatch):
    monkeypatch.setattr(bernoulli_linear, "FUSED_MIN_NUMEL", 1)
    h, weight, bias, x = _inputs((2,), 3, 4, 5, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h, weight, bias)
        got = OP(h, weight, bias, x)  # auto: the reference (autocast rules the fused backend out)
        with pytest.raises(vk.KernelUnavailableError, match="autocast"):
            OP(h, weight, bias, x, backend="fused")
    assert logits.dtype == torch.bfloat16 and got.dtype == torch.float32
    # The float32 density of the bfloat16 product, exactly.
    want = -F.binary_cross_entropy_with_logits(logits.float(), x.expand(logits.shape), reduction="none").sum(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_forcing_triton_raises():
    h, weight, bias, x = _inputs((2,), 3, 4, 5)
    with pytest.raises(vk.KernelUnavailableError, match="no triton backend"):
        OP(h, weight, bias, x, backend="triton")
