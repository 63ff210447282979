"""fit checkpoints and restore_best keep every kind of module state, not only tensors.

A ``state_dict`` holds parameters, persistent buffers and, for a module with
``get_extra_state``, a non-tensor ``_extra_state`` entry (``VBLLRegression`` keeps its
tuned prior scale there); non-persistent buffers are not state and stay as the module
builds them.  Checkpoints, resume and ``restore_best`` must handle all of them.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from fit_models import regression_data
from torch import nn

from vitorch.models.last_layer import VBLLRegression
from vitorch.testing._state import snapshot, state_differences
from vitorch.training import fit, load_checkpoint
from vitorch.training.checkpoint import fingerprint


class Interrupt(Exception):
    pass


class Stateful(nn.Module):
    """Least squares plus every kind of state: extra state (a dict with a counter and a list),
    BatchNorm's running statistics, a persistent buffer updated in forward (a running mean of
    the loss), an integer buffer and a non-persistent buffer."""

    def __init__(self, d: int = 3):
        super().__init__()
        self.norm = nn.BatchNorm1d(d)  # running statistics and an integer counter, versioned in _metadata
        self.lin = nn.Linear(d, 1)
        self.register_buffer("running_loss", torch.zeros(()))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("scratch", torch.arange(3.0), persistent=False)
        self.extra = {"steps": 0, "losses": [], "scale": 1.0}

    def forward(self, batch):
        x, y = batch
        loss = (self.lin(self.norm(x)).squeeze(-1) - y).pow(2).mean() * self.extra["scale"]
        if self.training:
            with torch.no_grad():
                self.running_loss.mul_(0.9).add_(0.1 * loss.detach())
                self.calls += 1
            self.extra["steps"] += 1
            self.extra["losses"].append(round(float(loss.detach()), 6))
            self.extra["scale"] *= 0.99
        return loss

    def get_extra_state(self):
        return {"steps": self.extra["steps"], "losses": list(self.extra["losses"]), "scale": self.extra["scale"]}

    def set_extra_state(self, state):
        self.extra = {"steps": state["steps"], "losses": list(state["losses"]), "scale": state["scale"]}


class WithVBLL(nn.Module):
    """A feature network and a VBLLRegression head trained on the head's ELBO per datum."""

    def __init__(self, d: int = 3):
        super().__init__()
        self.features = nn.Linear(d, 4)
        self.head = VBLLRegression(4, prior_scale=0.7, noise_variance=0.5)

    def forward(self, batch):
        x, y = batch
        return -self.head.elbo(torch.tanh(self.features(x)), y) / x.shape[0]


def interrupted_then_resumed(make, data, tmp, **options):
    torch.manual_seed(0)
    model = make()

    def cut(ctx):
        if ctx.step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(model, data, checkpoint_dir=tmp, callbacks=[cut], **options)
    torch.manual_seed(1)
    model = make()  # another initial state: all must come from the checkpoint
    fit(model, data, checkpoint_dir=tmp, resume=tmp, **options)
    return model


@pytest.mark.parametrize("make", [Stateful, WithVBLL], ids=["extra-state-and-buffers", "vbll-head"])
def test_resume_restores_extra_state_and_buffers_bit_for_bit(make, tmp_path):
    data = regression_data(20)
    options = dict(steps=8, batch_size=6, lr=0.05, seed=3, checkpoint_every=2, progress=False)
    torch.manual_seed(0)
    model = make()
    fit(model, data, checkpoint_dir=tmp_path / "full", **options)
    reference = snapshot(model.state_dict())
    resumed = interrupted_then_resumed(make, data, tmp_path / "cut", **options)
    assert state_differences(resumed.state_dict(), reference) == []
    if make is Stateful:
        assert "_extra_state" in reference
        assert resumed.extra["steps"] == 8 and torch.equal(resumed.scratch, torch.arange(3.0))


@pytest.mark.parametrize("make", [Stateful, WithVBLL], ids=["extra-state-and-buffers", "vbll-head"])
def test_restore_best_restores_extra_state_and_buffers(make, tmp_path):
    data = regression_data(20)
    states = {}

    def keep(ctx):
        states[ctx.step] = snapshot(ctx.model.state_dict())

    torch.manual_seed(0)
    model = make()
    history = fit(
        model,
        data,
        steps=6,
        batch_size=6,
        lr=0.05,
        seed=3,
        eval_data=data,
        eval_every=1,
        restore_best=True,
        checkpoint_dir=tmp_path,
        checkpoint_every=3,
        callbacks=[keep],
        progress=False,
    )
    assert state_differences(model.state_dict(), states[history.best_step]) == []
    # The best state travels in the checkpoint too (extra state included) and reads back with weights_only.
    payload = load_checkpoint(tmp_path, model)
    assert state_differences(payload["best_model"], states[history.best_step]) == []


def test_best_state_is_a_copy_that_later_steps_do_not_change(tmp_path):
    """The extra state's containers are copied, not shared with the live module."""
    data = regression_data(20)
    torch.manual_seed(0)
    model = Stateful()
    seen = {}

    def keep(ctx):
        seen[ctx.step] = snapshot(ctx.model.state_dict())

    # Every evaluation after the first is worse: the first step's state must come back intact.
    history = fit(
        model,
        data,
        steps=4,
        batch_size=20,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        seed=3,
        eval_data=data,
        eval_every=1,
        restore_best=True,
        mode="min",
        monitor="loss",
        min_delta=1e9,
        callbacks=[keep],
        progress=False,
    )
    assert history.best_step == 1
    assert model.extra["steps"] == 1 and model.extra["losses"] == seen[1]["_extra_state"]["losses"]


def test_a_checkpoint_whose_extra_state_has_another_type_is_refused(tmp_path):
    data = regression_data(20)
    torch.manual_seed(0)
    model = Stateful()
    fit(model, data, steps=2, batch_size=10, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)

    class ListState(Stateful):
        def get_extra_state(self):
            return [self.extra["steps"]]

    with pytest.raises(ValueError, match=r"_extra_state: checkpoint <dict>, model <list>"):
        load_checkpoint(tmp_path, ListState())


def test_fingerprint_of_tensor_entries_is_unchanged():
    """Checkpoints written before extra state was supported keep their fingerprint."""
    state = {"w": torch.zeros(2, 3), "b": torch.zeros(3, dtype=torch.float32)}
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(f"{name}:{tuple(state[name].shape)}:{state[name].dtype};".encode())
    assert fingerprint(state) == h.hexdigest()
