"""Resume refuses a changed run, lists every difference at once, and applies what it is told to override.

Before, a checkpoint kept no record of the run's configuration: a mid-epoch resume with
another batch size or data length silently skipped the wrong batches, a new learning
rate was silently replaced by the checkpoint's, and another optimizer type failed with
torch's ``KeyError: 'momentum'``.
"""

from __future__ import annotations

import pytest
import torch
from fit_models import Regression, regression_data

from vitorch.training import fit
from vitorch.training.checkpoint import _digest


class Interrupt(Exception):
    pass


def sgd(lr):
    return lambda ps: torch.optim.SGD(ps, lr=lr)


def checkpointed(tmp, n=40, steps=7, **extra):
    """A run of ``steps`` steps over ``n`` rows in batches of 8, checkpointed at its end (step 7: mid-epoch 1)."""
    torch.manual_seed(0)
    options = dict(steps=steps, batch_size=8, seed=3, optimizer=sgd(0.05), checkpoint_dir=tmp, progress=False)
    options.update(extra)
    fit(Regression(), regression_data(n), **options)
    return options


def test_other_batch_size_and_data_length_are_refused_in_one_message(tmp_path):
    options = checkpointed(tmp_path)
    with pytest.raises(ValueError) as info:
        fit(Regression(), regression_data(30), **dict(options, steps=10, batch_size=4, resume=tmp_path))
    msg = str(info.value)
    assert msg.startswith("resume: this run differs from the checkpointed one (step 7 of ")
    assert "batch_size: checkpoint 8, this run 4" in msg and "data_length: checkpoint 40, this run 30" in msg
    # data may change only at an epoch boundary, so naming them does not help mid-epoch
    with pytest.raises(ValueError, match="needs a checkpoint at an epoch boundary; this one is mid-epoch"):
        fit(Regression(), regression_data(30), **dict(options, steps=10, resume=tmp_path),
            resume_overrides=("data_length",))  # fmt: skip


def test_shuffle_drop_last_and_seed_are_part_of_the_configuration(tmp_path):
    options = checkpointed(tmp_path)
    with pytest.raises(ValueError) as info:
        fit(Regression(), regression_data(40), **dict(options, steps=10, shuffle=False, drop_last=True, seed=4,
                                                      resume=tmp_path))  # fmt: skip
    for text in ("shuffle: checkpoint True, this run False", "drop_last: checkpoint False, this run True",
                 "seed: checkpoint 3, this run 4"):  # fmt: skip
        assert text in str(info.value)
    # No seed on resume means the checkpoint's.
    fit(Regression(), regression_data(40), **dict(options, steps=10, seed=None, resume=tmp_path))


def test_a_new_learning_rate_is_refused_unless_overridden_and_then_applied(tmp_path):
    options = checkpointed(tmp_path)
    resumed = dict(options, steps=10, optimizer=sgd(0.01), resume=tmp_path)
    with pytest.raises(
        ValueError, match=r"lr: checkpoint 0.05, this run 0.01 \(allowed with resume_overrides=\('lr',\)\)"
    ):
        fit(Regression(), regression_data(40), **resumed)
    before = {}

    def sgd_step_used_the_new_rate(ctx):
        for p in ctx.model.parameters():  # the gradient of this step is still in .grad
            assert torch.equal(p.detach(), before[p].add(p.grad, alpha=-0.01))
        before.update({p: p.detach().clone() for p in ctx.model.parameters()})

    model = Regression()
    model.load_state_dict(torch.load(tmp_path / "step-000000007.pt", weights_only=True)["model"])
    before.update({p: p.detach().clone() for p in model.parameters()})
    hist = fit(model, regression_data(40), **resumed, resume_overrides=("lr",), callbacks=[sgd_step_used_the_new_rate])
    assert [r["lr"] for r in hist.steps] == [0.05] * 7 + [0.01] * 3


def test_an_overridden_rate_keeps_the_schedule(tmp_path):
    schedule = lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)  # noqa: E731
    options = checkpointed(tmp_path, steps=4, scheduler=schedule)
    hist = fit(Regression(), regression_data(40), **dict(options, steps=7, optimizer=sgd(0.5), resume=tmp_path),
               resume_overrides=("lr",))  # fmt: skip
    # 0.05 halved at steps 2 and 4 is 0.0125 at step 5; the new base rate is 10x larger.
    assert [r["lr"] for r in hist.steps] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.125, 0.125, 0.0625])


def test_another_optimizer_type_is_a_clear_error(tmp_path):
    options = checkpointed(tmp_path)
    adam = dict(options, steps=10, optimizer=lambda ps: torch.optim.Adam(ps, lr=0.05), resume=tmp_path)
    with pytest.raises(ValueError, match=r"optimizer: checkpoint torch.optim.sgd.SGD, this run torch.optim.adam.Adam"):
        fit(Regression(), regression_data(40), **adam)
    with pytest.raises(ValueError, match="'optimizer', which can never change on resume"):
        fit(Regression(), regression_data(40), **adam, resume_overrides=("optimizer",))


def test_momentum_and_other_hyper_parameters_can_be_overridden(tmp_path):
    options = checkpointed(tmp_path, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5))
    changed = dict(options, steps=9, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), resume=tmp_path)
    with pytest.raises(ValueError, match="momentum: checkpoint 0.5, this run 0.9"):
        fit(Regression(), regression_data(40), **changed)
    model = Regression()
    fit(model, regression_data(40), **changed, resume_overrides=("momentum",), callbacks=[
        lambda c: c.optimizer.param_groups[0]["momentum"] == 0.9 or pytest.fail("momentum not applied")])  # fmt: skip


def test_data_may_change_at_an_epoch_boundary_when_named(tmp_path):
    # 40 rows in batches of 8: step 5 ends epoch 0.
    options = checkpointed(tmp_path, steps=5)
    more = regression_data(48)
    with pytest.raises(ValueError, match=r"data_length: checkpoint 40, this run 48 \(allowed with .*epoch boundary"):
        fit(Regression(), more, **dict(options, steps=None, epochs=3, resume=tmp_path))
    hist = fit(Regression(), more, **dict(options, steps=None, epochs=3, resume=tmp_path),
               resume_overrides=("data_length",))  # fmt: skip
    # epoch 0 on the old 5 batches, then two epochs of 6 batches on the new data
    assert [r["epoch"] for r in hist.steps] == [0] * 5 + [1] * 6 + [2] * 6


def test_data_may_change_after_a_run_that_ended_with_its_epochs(tmp_path):
    options = checkpointed(tmp_path, steps=None, epochs=1)  # final checkpoint at batch 0 of epoch 1
    hist = fit(Regression(), regression_data(16), **dict(options, epochs=2, batch_size=4, resume=tmp_path),
               resume_overrides=("data_length", "batch_size"))  # fmt: skip
    assert [r["epoch"] for r in hist.steps] == [0] * 5 + [1] * 4


def test_bad_override_names_are_reported(tmp_path):
    options = checkpointed(tmp_path)
    with pytest.raises(ValueError, match="resume_overrides names 'learning_rate', which is not a setting"):
        fit(Regression(), regression_data(40), **dict(options, resume=tmp_path), resume_overrides=("learning_rate",))
    with pytest.raises(
        ValueError, match=r"resume_overrides must be a tuple of setting names, e.g. \('lr',\); got 'lr'"
    ):
        fit(Regression(), regression_data(40), **dict(options, resume=tmp_path), resume_overrides="lr")
    with pytest.raises(ValueError, match="resume_overrides needs resume"):
        fit(Regression(), regression_data(40), steps=1, resume_overrides=("lr",))


def format_one(tmp_path):
    """Rewrite the newest checkpoint as the previous format wrote it: no configuration."""
    path = sorted(tmp_path.glob("step-*.pt"))[-1]
    payload = torch.load(path, weights_only=True)
    del payload["config"]
    payload["format"] = "vitorch.fit/1"
    payload["digest"] = _digest(payload)
    torch.save(payload, path)


def test_a_format_one_checkpoint_resumes_with_a_warning(tmp_path):
    options = checkpointed(tmp_path)
    format_one(tmp_path)
    with pytest.warns(UserWarning, match="does not record the run's configuration"):
        hist = fit(Regression(), regression_data(40), **dict(options, steps=9, resume=tmp_path))
    assert len(hist.steps) == 9
    # Overrides still apply: the rate is this run's.
    format_one(tmp_path)
    with pytest.warns(UserWarning):
        hist = fit(Regression(), regression_data(40), **dict(options, steps=10, optimizer=sgd(0.01), resume=tmp_path),
                   resume_overrides=("lr",))  # fmt: skip
    assert [r["lr"] for r in hist.steps[-1:]] == [0.01]
    # Without a configuration to compare, another optimizer type still fails clearly, at resume
    # (torch loads the state and fails at the first step with KeyError: 'betas').
    format_one(tmp_path)
    adam = dict(options, steps=12, resume=tmp_path, optimizer=lambda ps: torch.optim.Adam(ps, lr=0.05))
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match="optimizer state in .* written by another optimizer"),
    ):
        fit(Regression(), regression_data(40), **adam)
