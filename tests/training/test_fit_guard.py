"""fit's guard beyond NaN losses: non-finite evaluations, impossible data, divergent updates.

Each of these used to pass silently or surface later as something else: a NaN held-out
metric froze early stopping (``value > nan`` is never true), a datum whose bound sat at
the ``-1e30`` floor trained as a finite loss of ~1e29, and an update with ``lr=1e30``
showed up one step later as a family's validation error.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from fit_models import Floored, Regression, floored_data, regression_data
from torch import nn

import vitorch as vt
from vitorch.training import NonFiniteError, fit

# ----- non-finite evaluations ---------------------------------------------------------


def scripted_eval(values):
    values = iter(values)
    return lambda model, loader: {"score": next(values)}


def eval_options(**extra):
    options = dict(steps=8, batch_size=16, eval_data=regression_data(8), eval_every=1, mode="max", patience=2,
                   restore_best=True, optimizer=lambda ps: torch.optim.SGD(ps, lr=1e-3), progress=False)  # fmt: skip
    options.update(extra)
    return options


def test_a_nan_evaluation_raises_naming_the_step():
    # Before: the NaN at step 1 became "best", nothing beat it, and the run stopped early at
    # step 3 and rolled back to step 1 without a word.
    with pytest.raises(NonFiniteError, match=r"non-finite evaluation at step 1 \(epoch 0\): score = nan"):
        fit(Regression(), regression_data(16), eval_fn=scripted_eval([math.nan, 1.0, 2.0]), **eval_options())


def test_a_skipped_nan_evaluation_takes_no_part_in_early_stopping():
    seen = {}
    model = Regression()
    hist = fit(model, regression_data(16), eval_fn=scripted_eval([math.nan, 1.0, 2.0, math.inf, 3.0, 2.0, 2.5, 1.0]),
               on_nonfinite="skip", callbacks=[lambda c: seen.update({c.step: c.model.state_dict()})],
               **eval_options())  # fmt: skip
    assert hist.skipped_evals == 2 and hist.skipped == 0
    assert [e.get("skipped", 0) for e in hist.evals] == [1, 0, 0, 1, 0, 0, 0]
    # Early stopping counts only usable evaluations: best 3.0 at step 5, then 2.0 and 2.5 are worse.
    assert hist.best_step == 5 and hist.best_value == 3.0 and hist.stop_reason == "early_stopping"
    assert len(hist.steps) == 7
    for name, value in model.state_dict().items():
        assert torch.equal(value, seen[5][name])


def test_consecutive_skipped_evaluations_give_up():
    with pytest.raises(NonFiniteError, match="3 consecutive non-finite evaluations"):
        fit(Regression(), regression_data(16), eval_fn=scripted_eval([1.0] + [math.nan] * 7), on_nonfinite="skip",
            max_consecutive_skips=2, **eval_options(patience=None))  # fmt: skip


def test_the_floor_is_what_the_loss_gives_an_impossible_datum():
    out = Floored()(floored_data(4, bad=[2]))
    assert out.bound[2] < -1e29 and torch.isfinite(out.loss)  # finite: nothing else would notice it


def test_impossible_training_data_raise_naming_the_step():
    # Batch 3 (rows 8..11, no shuffling) holds row 9.  Before: trained silently on a loss of ~2.5e29.
    with pytest.raises(NonFiniteError, match=r"impossible data at step 3 \(epoch 0, batch 3\).* 1 of 4 data"):
        fit(Floored(), floored_data(bad=[9]), steps=4, batch_size=4, shuffle=False, progress=False)


def test_impossible_training_data_skipped_and_counted():
    seen = {}
    model = Floored()
    hist = fit(model, floored_data(bad=[9, 10]), steps=4, batch_size=4, shuffle=False, on_nonfinite="skip",
               callbacks=[lambda c: seen.update({c.step: [p.detach().clone() for p in c.model.parameters()]})],
               progress=False)  # fmt: skip
    assert [r["impossible_data"] for r in hist.steps] == [0, 0, 2, 0]
    assert [r["skipped"] for r in hist.steps] == [0, 0, 1, 0]
    assert hist.impossible_data == 2 and hist.skipped == 1
    for a, b in zip(seen[3], seen[2]):  # the step with impossible data changed nothing
        assert torch.equal(a, b)


def test_impossible_heldout_data_make_the_evaluation_unusable():
    # Before: the held-out mean bound read a finite -1e30 / 8 and ranked the run with it.
    with pytest.raises(NonFiniteError, match=r"evaluation at step 2 \(epoch 0\): 1 of 8 held-out data"):
        fit(Floored(), floored_data(), steps=3, batch_size=8, eval_data=floored_data(8, bad=[5]), eval_every=2,
            progress=False)  # fmt: skip


# ----- divergent updates ---------------------------------------------------------------


class LogScaleGuide(nn.Module):
    """A guide with a log-scale parameter: after ``lr=1e30`` the scale ``exp(log_scale)`` is 0 or inf,
    which ``DiagNormal``'s validation refuses at the next forward."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(2, dtype=dtype))

    def forward(self, x):
        q = vt.DiagNormal(self.loc.expand_as(x), self.log_scale.exp().expand_as(x))

        def log_joint(z):
            return (-0.5 * (x - z).pow(2)).sum(-1)

        return vt.loss(log_joint, q, num_particles=2)


def test_a_divergent_update_is_reported_at_the_step_that_made_it():
    # Adam moves every entry by ~lr = 1e30, beyond sqrt(float32 max) = 1.8e19.  Before: step 2's
    # forward raised DiagNormal's "scale must be positive and finite" with no step number.
    x = floored_data().float()
    with pytest.raises(NonFiniteError, match=r"optimizer step at step 1 \(epoch 0, batch 1\) diverged") as info:
        fit(LogScaleGuide(), x, steps=3, batch_size=8, lr=1e30, progress=False)
    assert "log_scale (entries up to 1e+30, whose squares overflow torch.float32)" in str(info.value)


def test_an_update_to_inf_is_reported_at_its_step_even_when_skipping():
    # SGD with lr=1e308 overflows float64 to inf.  Before: "non-finite loss inf at step 2".
    with pytest.raises(NonFiniteError, match=r"step 1 \(epoch 0, batch 1\) diverged.*lin.weight \(0 NaN and 3 inf"):
        fit(Regression(), regression_data(16), steps=3, batch_size=16, on_nonfinite="skip",
            optimizer=lambda ps: torch.optim.SGD(ps, lr=1e308), progress=False)  # fmt: skip


class Big(Regression):
    """Least squares plus a parameter of entries 1e154 the loss does not square: their squares
    fit float64 (1e308), their 2-norm does not."""

    def __init__(self):
        super().__init__()
        self.big = nn.Parameter(torch.full((4,), 1e154))

    def forward(self, batch):
        return super().forward(batch) + 0.0 * self.big.sum()


def test_large_finite_parameters_pass():
    model = Big()
    hist = fit(model, regression_data(16), steps=2, batch_size=16, progress=False)
    assert len(hist.steps) == 2 and torch.equal(model.big, torch.full((4,), 1e154))


class FailsOnCall(Regression):
    def __init__(self, call: int):
        super().__init__()
        self.call, self.calls = call, 0

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.call:
            raise ValueError("DiagNormal: parameter scale must be positive and finite")
        return super().forward(batch)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_an_error_in_the_forward_names_the_step():
    # The error keeps its type; fit adds where it happened.
    with pytest.raises(ValueError, match="DiagNormal") as info:
        fit(FailsOnCall(3), regression_data(16), steps=4, batch_size=8, progress=False)
    notes = "".join(info.value.__notes__)
    assert "raised in vitorch.fit by the model's forward or backward at step 3 (epoch 1, batch 1)" in notes


# ----- half precision -----------------------------------------------------------------


class HalfFloored(nn.Module):
    """A float16 guide and log-joint through ``vt.loss``; row 1 is outside the model's support."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2, dtype=torch.float16))

    def forward(self, x):
        x = x.to(torch.float16)
        q = vt.DiagNormal(self.loc.expand_as(x), torch.ones_like(x))
        outside = torch.arange(x.shape[0]) == 1

        def log_joint(z):
            return (-0.5 * (x - z).pow(2).sum(-1)).masked_fill(outside, -math.inf)

        return vt.loss(log_joint, q, num_particles=4, objective=vt.objectives.iwae)


def test_an_impossible_datum_in_float16_is_counted_with_a_finite_loss():
    # TESTING.md: finite losses and gradients in half precision.  fit must see impossible data, not a NaN loss.
    x = floored_data(4)
    model = HalfFloored()
    out = model(x)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(model.loc.grad).all()
    hist = fit(HalfFloored(), x, steps=1, batch_size=4, on_nonfinite="skip", progress=False)
    assert hist.steps[0]["impossible_data"] == 1 and math.isfinite(hist.steps[0]["loss"])
    with pytest.raises(NonFiniteError, match=r"^impossible data at step 1 \(epoch 0, batch 1\)"):
        fit(HalfFloored(), x, steps=1, batch_size=4, progress=False)
