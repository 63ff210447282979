"""Checkpoints: bit-exact resume, and refusal of truncated, tampered or foreign files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from fit_models import NoisyRows, Regression, TinyVAE, gaussian_data, regression_data

from vitorch.training import fit, load_checkpoint
from vitorch.training.rng import capture_rng, restore_rng


class Interrupt(Exception):
    pass


def interrupt_at(step: int):
    def callback(ctx):
        if ctx.step == step:
            raise Interrupt

    return callback


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def without_time(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history.steps]


def vae_run(tmp, **extra):
    """A fresh model and options exercising every piece of state: sampling in the loss,
    shuffling, a scheduler, held-out evaluation with early stopping and best weights."""
    torch.manual_seed(1234)  # same init, same global stream for every run of a comparison
    model = TinyVAE()
    options = dict(
        steps=23,
        batch_size=16,
        lr=0.03,
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.8),
        eval_data=gaussian_data(12, seed=9),
        eval_every=3,
        patience=50,
        restore_best=True,
        checkpoint_dir=tmp,
        checkpoint_every=5,
        progress=False,
    )
    options.update(extra)
    return model, options


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    x = gaussian_data(40)  # 3 batches per epoch: checkpoints at 5, 10, 15 fall mid-epoch
    model, options = vae_run(tmp_path / "a")
    full = fit(model, x, **options)
    reference = state(model)

    model, options = vae_run(tmp_path / "b", callbacks=[interrupt_at(13)])
    with pytest.raises(Interrupt):
        fit(model, x, **options)
    torch.manual_seed(999)  # a different process state: everything must come from the file
    model, options = vae_run(tmp_path / "b")
    for p in model.parameters():
        torch.nn.init.normal_(p)
    resumed = fit(model, x, resume=tmp_path / "b", **options)  # newest: step-10
    assert_bit_identical(state(model), reference)
    assert without_time(resumed) == without_time(full)
    assert resumed.evals == full.evals and resumed.best_step == full.best_step


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_a_step_limit_with_a_user_loader_and_random_transforms(tmp_path, workers):
    # A DataLoader the user built: shuffled by its own generator, rows perturbed with
    # torch's generator (like dynamic binarization): the main process's global one, or
    # with workers each worker's, seeded from a base seed drawn when the epoch starts.
    def run(steps, resume=None):
        torch.manual_seed(77)
        model = TinyVAE()
        g = torch.Generator().manual_seed(5)
        loader = torch.utils.data.DataLoader(
            NoisyRows(gaussian_data(30)), batch_size=8, shuffle=True, generator=g, num_workers=workers
        )
        fit(model, loader, steps=steps, lr=0.05, checkpoint_dir=tmp_path / "c", resume=resume, progress=False)
        return state(model)

    reference = run(14)
    for f in (tmp_path / "c").iterdir():
        f.unlink()
    run(6)  # stops mid-epoch 1 (4 batches per epoch) and writes step-6
    torch.manual_seed(3)
    assert_bit_identical(run(14, resume=tmp_path / "c"), reference)


def test_resume_with_loader_drawing_from_the_global_generator(tmp_path):
    def run(steps, resume=None):
        torch.manual_seed(8)
        model = Regression()
        loader = torch.utils.data.DataLoader(_Pairs(*regression_data(20)), batch_size=6, shuffle=True)
        fit(model, loader, steps=steps, lr=0.05, checkpoint_dir=tmp_path, resume=resume, progress=False)
        return state(model)

    reference = run(9)
    for f in tmp_path.iterdir():
        f.unlink()
    run(5)
    assert_bit_identical(run(9, resume=tmp_path), reference)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_rng_states_round_trip_through_plain_tensors():
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 -- the legacy global state is what is under test
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    saved = capture_rng()
    draws = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))  # noqa: NPY002
    restore_rng(saved)
    again = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))  # noqa: NPY002
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2:] == again[2:]


def test_keeps_the_newest_checkpoints(tmp_path):
    fit(Regression(), regression_data(16), steps=9, batch_size=4, checkpoint_dir=tmp_path, checkpoint_every=2,
        keep_checkpoints=2, progress=False)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000008.pt", "step-000000009.pt"]


@pytest.fixture
def checkpoint(tmp_path):
    fit(Regression(), regression_data(8), steps=2, batch_size=4, checkpoint_dir=tmp_path, progress=False)
    return tmp_path / "step-000000002.pt"


def test_truncated_checkpoint_is_refused(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint .*truncated"):
        load_checkpoint(checkpoint, Regression())
    checkpoint.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        fit(Regression(), regression_data(8), steps=3, resume=checkpoint, progress=False)


def test_tampered_checkpoint_is_refused(checkpoint):
    payload = torch.load(checkpoint, weights_only=True)
    payload["model"]["lin.weight"][0, 0] += 1e-12
    torch.save(payload, checkpoint)
    with pytest.raises(ValueError, match="digest"):
        load_checkpoint(checkpoint, Regression())
    payload = torch.load(checkpoint, weights_only=True)
    del payload["rng"]
    torch.save(payload, checkpoint)
    with pytest.raises(ValueError, match=r"missing entries \['rng'\]"):
        load_checkpoint(checkpoint, Regression())


def test_checkpoint_holding_arbitrary_objects_is_refused(checkpoint):
    payload = torch.load(checkpoint, weights_only=True)
    payload["loop"]["hook"] = _Evil()  # would run code if unpickled freely
    torch.save(payload, checkpoint)
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(checkpoint, Regression())


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_checkpoint_of_another_model_is_refused(checkpoint):
    with pytest.raises(ValueError, match=r"another model(.|\n)*enc.weight"):
        load_checkpoint(checkpoint, TinyVAE(d=3))
    with pytest.raises(ValueError, match=r"lin.weight: checkpoint \(1, 3\).*model \(1, 5\)"):
        load_checkpoint(checkpoint, Regression(d=5))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(Regression(), regression_data(8), steps=1, resume=tmp_path, progress=False)
