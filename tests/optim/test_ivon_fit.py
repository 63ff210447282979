"""IVON inside vitorch.fit: training on sampled weights, and exact resume of its state."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import vitorch as vt
from vitorch.optim import IVON
from vitorch.training import load_checkpoint

N = 96


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


class Classifier(nn.Module):
    """Returns the mean cross-entropy of a batch; remembers the first weight it saw."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        self.seen = []

    def forward(self, batch):
        x, y = batch
        self.seen.append(self.net[0].weight.detach().clone())
        return F.cross_entropy(self.net(x), y)


def fresh(mc_samples=1):
    torch.manual_seed(7)
    model = Classifier()
    return model, IVON(model.parameters(), lr=0.2, ess=N, hess_init=0.5, mc_samples=mc_samples, seed=3)


@pytest.mark.parametrize("mc_samples", [1, 2])
def test_fit_trains_on_draws_exactly_as_a_hand_written_loop(mc_samples):
    x, y = data()
    model, opt = fresh(mc_samples)
    history = vt.fit(model, (x, y), optimizer=opt, steps=6, batch_size=N, shuffle=False, progress=False)
    by_hand, hand_opt = fresh(mc_samples)
    losses, means = [], []
    for _ in range(6):
        step_losses = []
        for _ in range(mc_samples):
            means.append(by_hand.net[0].weight.detach().clone())
            with hand_opt.sampled_params(train=True):
                loss = by_hand((x, y))
                loss.backward()
            step_losses.append(loss.item())
        hand_opt.step()
        losses.append(sum(step_losses) / mc_samples)
    for a, b in zip(model.parameters(), by_hand.parameters()):
        assert torch.equal(a, b)
    # The logged loss is the draws' average; every forward saw a draw, not the mean.
    assert [r["loss"] for r in history.steps] == pytest.approx(losses, rel=1e-12)
    assert len(model.seen) == len(by_hand.seen) == 6 * mc_samples
    assert all(torch.equal(a, b) for a, b in zip(model.seen, by_hand.seen))
    assert all((seen - mean).abs().min() > 0 for seen, mean in zip(by_hand.seen, means))


class Interrupt(Exception):
    pass


def run(directory, **extra):
    x, y = data()
    model, opt = fresh(mc_samples=2)
    vt.fit(
        model, (x, y), optimizer=opt, steps=20, batch_size=16, seed=4,
        checkpoint_dir=directory, checkpoint_every=5, progress=False, **extra,
    )  # fmt: skip
    return model, opt


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole, whole_opt = run(tmp_path / "whole")

    def stop_at_12(ctx):
        if ctx.step == 12:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "cut", callbacks=[stop_at_12])  # the newest checkpoint is step 10
    payload = load_checkpoint(tmp_path / "cut", fresh()[0])
    assert payload["loop"]["step"] == 10
    assert set(payload["optimizer"]["noise"]) == {"seed", "generators"}  # the noise stream is saved
    resumed, resumed_opt = run(tmp_path / "cut", resume=tmp_path / "cut")
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        for key in ("hess", "momentum", "step"):
            assert torch.equal(whole_opt.state[p][key], resumed_opt.state[q][key]), key
