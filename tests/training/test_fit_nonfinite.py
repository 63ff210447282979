"""The non-finite guard: stop naming the step and parameter, or skip and count."""

from __future__ import annotations

import math

import pytest
import torch
from fit_models import regression_data

from vitorch.training import NonFiniteError, fit


class Flaky(torch.nn.Module):
    """Least squares plus a parameter ``gate`` whose gradient (or the loss) turns non-finite
    on chosen calls: ``sqrt(0)`` has an infinite derivative, ``0 * inf`` is NaN."""

    def __init__(self, bad_calls, kind="grad"):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.gate = torch.nn.Parameter(torch.tensor(0.0))
        self.bad_calls, self.kind, self.calls = set(bad_calls), kind, 0

    def forward(self, batch):
        self.calls += 1
        x, y = batch
        loss = (self.lin(x).squeeze(-1) - y).pow(2).mean()
        if self.calls in self.bad_calls:
            if self.kind == "grad":  # finite loss, NaN gradient for gate only
                return loss + torch.sqrt(self.gate - self.gate.detach())
            return loss + math.inf * (1 + self.gate)  # infinite loss and gate gradient
        return loss + 0.0 * self.gate


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["grad", "loss"])
def test_raise_names_the_step_and_the_parameter(kind):
    model = Flaky(bad_calls={3}, kind=kind)
    seen = {}
    remember = [lambda c: seen.update({c.step: snapshot(c.model)})]
    with pytest.raises(NonFiniteError) as info:
        fit(model, regression_data(16), steps=5, batch_size=4, callbacks=remember, progress=False)
    msg = str(info.value)
    assert "step 3 (epoch 0, batch 3)" in msg and "gate" in msg and "lin.weight" not in msg
    assert ("non-finite loss inf" in msg) == (kind == "loss")
    # The bad step never reached the optimizer: the parameters are those after step 2.
    for a, b in zip(snapshot(model), seen[2]):
        assert torch.equal(a, b)


def test_skip_counts_and_leaves_the_parameters_finite():
    model = Flaky(bad_calls={2, 5, 6})
    seen = {}
    hist = fit(model, regression_data(16), steps=8, batch_size=4, on_nonfinite="skip",
               callbacks=[lambda c: seen.update({c.step: snapshot(c.model)})], progress=False)  # fmt: skip
    assert hist.skipped == 3
    assert [r["skipped"] for r in hist.steps] == [0, 1, 0, 0, 1, 1, 0, 0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for step in (2, 5, 6):  # a skipped step changes nothing (Adam's state included: next steps stay finite)
        for a, b in zip(seen[step], seen[step - 1]):
            assert torch.equal(a, b)


def test_skip_gives_up_after_too_many_in_a_row():
    model = Flaky(bad_calls=set(range(3, 100)))
    with pytest.raises(NonFiniteError, match="4 consecutive non-finite steps"):
        fit(model, regression_data(40), steps=20, batch_size=4, on_nonfinite="skip", max_consecutive_skips=3,
            progress=False)  # fmt: skip


class Huge(torch.nn.Module):
    """float32 gradients of 1e20 per entry: finite, but their squared norm overflows."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float32))

    def forward(self, x):
        return 1e20 * self.w.sum() + 0 * x.sum()


def test_finite_gradients_whose_norm_overflows_are_not_an_error():
    model = Huge()
    hist = fit(model, torch.zeros(4, 1), steps=2, batch_size=4, optimizer=lambda ps: torch.optim.SGD(ps, lr=1e-20),
               progress=False)  # fmt: skip
    assert hist.skipped == 0 and [r["skipped"] for r in hist.steps] == [0, 0]
    assert torch.allclose(model.w.detach(), torch.full((4,), -2.0, dtype=torch.float32))  # two steps of lr * 1e20
