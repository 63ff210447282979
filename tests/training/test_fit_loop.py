"""fit's loop: data kinds, stopping rules, optimizer/scheduler/clipping, history files, progress."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fit_models import NoisyRows, Regression, TinyVAE, gaussian_data, regression_data

import vitorch as vt
from vitorch.training import History, fit

from conftest import Z


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_converges_to_least_squares():
    # Deterministic full-batch problem: Adam must reach the closed-form minimizer.
    # Tolerance: after 600 steps at lr 0.05 on this well-conditioned 3-D problem Adam's
    # iterate sits within its step-size jitter (~lr * 1e-3) of the optimum.
    x, y = regression_data(32)
    model = Regression()
    fit(model, (x, y), steps=600, batch_size=32, lr=0.05, progress=False)
    design = torch.cat([x, torch.ones(32, 1)], 1)
    exact = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    got = torch.cat([model.lin.weight.squeeze(0), model.lin.bias])
    torch.testing.assert_close(got, exact, atol=1e-3, rtol=0)


def test_vae_heldout_bound_improves_and_history_is_complete():
    x, x_test = 4 * gaussian_data(64, seed=0) + 3, 4 * gaussian_data(32, seed=1) + 3
    model = TinyVAE()
    with torch.no_grad():
        before = model(x_test).bound
    hist = fit(model, x, epochs=60, batch_size=16, eval_data=x_test, eval_every=4, lr=0.05, progress=False)
    with torch.no_grad():
        after = model(x_test).bound
    assert isinstance(hist, History)
    assert [r["step"] for r in hist.steps] == list(range(1, 241))
    assert [r["epoch"] for r in hist.steps] == [e for e in range(60) for _ in range(4)]
    assert all({"loss", "bound", "lr", "skipped", "time"} <= set(r) for r in hist.steps)
    # vt.loss's value is -mean(bound) for a lower bound: the log must say the same.
    assert all(r["loss"] == pytest.approx(-r["bound"], rel=1e-12) for r in hist.steps)
    assert [e["step"] for e in hist.evals] == list(range(4, 241, 4))
    assert hist.stop_reason == "epochs"
    # Paired over the held-out data: the mean per-datum gain must exceed Z standard errors.
    gain = after - before
    assert gain.mean() > Z * gain.std() / len(gain) ** 0.5


def test_tensor_dataset_and_loader_inputs():
    x = gaussian_data(40)
    runs = {}
    for name, data in {"tensor": x, "dataset": NoisyRows(x)}.items():
        torch.manual_seed(0)
        model = TinyVAE()
        if name == "dataset":
            data.x = x
            data.__class__ = _Rows  # same rows, no noise: the order alone must match the tensor path
        fit(model, data, steps=7, batch_size=8, seed=3, progress=False)
        runs[name] = params(model)
    for a, b in zip(runs["tensor"], runs["dataset"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*regression_data(20)), batch_size=5)
    hist = fit(Regression(), _Unpack(loader), epochs=2, progress=False)
    assert len(hist.steps) == 8


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i]


class _Unpack(torch.utils.data.DataLoader):
    """A DataLoader whose batches are (x, y) lists, as TensorDataset collates them."""

    def __init__(self, loader):
        super().__init__(loader.dataset, batch_size=loader.batch_size)


@pytest.mark.parametrize(
    ("n", "batch", "drop_last", "steps"), [(50, 16, False, 4), (50, 16, True, 3), (48, 16, True, 3)]
)
def test_epochs_count_batches(n, batch, drop_last, steps):
    hist = fit(Regression(), regression_data(n), epochs=2, batch_size=batch, drop_last=drop_last, progress=False)
    assert len(hist.steps) == 2 * steps


def test_steps_and_epochs_stop_at_the_first():
    hist = fit(Regression(), regression_data(32), epochs=3, steps=5, batch_size=8, progress=False)
    assert len(hist.steps) == 5 and hist.stop_reason == "steps"
    hist = fit(Regression(), regression_data(32), epochs=1, steps=50, batch_size=8, progress=False)
    assert len(hist.steps) == 4 and hist.stop_reason == "epochs"


def test_optimizer_factory_scheduler_and_clipping():
    model = Regression()
    hist = fit(
        model,
        regression_data(16),
        steps=6,
        batch_size=16,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=1.0),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        clip_grad_norm=1e-3,
        progress=False,
    )
    # lr is logged before the step's scheduler update: 1, 1, .5, .5, .25, .25
    assert [r["lr"] for r in hist.steps] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert all(r["grad_norm"] > 1e-3 for r in hist.steps)  # the clip was active
    # SGD with a clipped gradient moves the parameters by at most lr * 1e-3 per step.
    model2 = Regression()
    model2.load_state_dict(model.state_dict())
    before = torch.cat([p.detach().flatten() for p in model2.parameters()])
    fit(model2, regression_data(16), steps=1, batch_size=16, optimizer=lambda ps: torch.optim.SGD(ps, lr=1.0),
        clip_grad_norm=1e-3, progress=False)  # fmt: skip
    after = torch.cat([p.detach().flatten() for p in model2.parameters()])
    assert torch.linalg.vector_norm(after - before) <= 1e-3 * (1 + 1e-9)


def test_reduce_on_plateau_steps_with_the_monitored_metric():
    values = iter([1.0, 0.5, 0.4, 0.3, 0.2])
    hist = fit(
        Regression(),
        regression_data(16),
        steps=5,
        batch_size=16,
        eval_data=regression_data(8),
        eval_every=1,
        eval_fn=lambda model, loader: {"score": next(values)},
        mode="max",
        optimizer=lambda ps: torch.optim.SGD(ps, lr=1.0),
        scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max", patience=0, factor=0.1),
        progress=False,
    )
    assert [round(r["lr"], 12) for r in hist.steps] == [1.0, 1.0, 0.1, 0.01, 0.001]


def test_early_stopping_restores_best_weights():
    scores = iter([1.0, 3.0, 2.0, 2.5, 2.9, 5.0])
    seen = {}

    def remember(ctx):
        seen[ctx.step] = params(ctx.model)

    model = Regression()
    hist = fit(
        model,
        regression_data(16),
        steps=50,
        batch_size=16,
        eval_data=regression_data(8),
        eval_every=2,
        eval_fn=lambda model, loader: {"score": next(scores)},
        patience=3,
        restore_best=True,
        callbacks=[remember],
        progress=False,
    )
    assert hist.stop_reason == "early_stopping"
    assert [e["step"] for e in hist.evals] == [2, 4, 6, 8, 10]
    assert hist.best_step == 4 and hist.best_value == 3.0
    for a, b in zip(params(model), seen[4]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Quadratic(torch.nn.Module):
    """A deterministic LossOutput: bound_i = -w * |x_i|^2, so the held-out mean is known exactly."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        bound = -self.w * x.pow(2).sum(-1)
        return vt.LossOutput(loss=-bound.mean(), bound=bound.detach(), log_w=bound.detach()[None], z=x[None])


def test_default_eval_is_the_mean_per_datum():
    x_test = gaussian_data(20, seed=5)
    model = _Quadratic()
    hist = fit(model, gaussian_data(16), steps=2, batch_size=16, eval_data=x_test, eval_batch_size=7, progress=False)
    # Batches of 7, 7 and 6: the metric is the mean over data, not over batches.
    assert [e["step"] for e in hist.evals] == [1, 2]  # default: once per epoch (one batch here)
    assert set(hist.evals[0]) == {"step", "epoch", "bound"}
    assert hist.evals[-1]["bound"] == pytest.approx((-model.w * x_test.pow(2).sum(-1)).mean().item(), rel=1e-12)
    # A scalar-loss model is evaluated by its loss, weighted by batch size.
    x, y = regression_data(20, seed=4)
    reg = Regression()
    hist = fit(reg, (x, y), steps=1, batch_size=20, eval_data=(x, y), eval_batch_size=7, lr=1e-9, progress=False)
    with torch.no_grad():
        assert hist.evals[0]["loss"] == pytest.approx(reg((x, y)).item(), rel=1e-12)


def test_callback_stop_and_history_files(tmp_path):
    def stop_at_3(ctx):
        ctx.stop = ctx.step == 3

    hist = fit(
        TinyVAE(),
        gaussian_data(32),
        steps=10,
        batch_size=8,
        eval_data=gaussian_data(8, seed=2),
        eval_every=2,
        callbacks=[stop_at_3],
        log_dir=tmp_path,
        progress=False,
    )
    assert hist.stop_reason == "callback" and len(hist.steps) == 3
    rows = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in hist.steps]
    evals = list(csv.DictReader((tmp_path / "evals.csv").open()))
    assert [float(r["bound"]) for r in evals] == [e["bound"] for e in hist.evals]
    payload = json.loads((tmp_path / "history.json").read_text())
    assert payload["steps"] == hist.steps and payload["stop_reason"] == "callback"


def test_progress_bar_shows_loss_and_bound(capsys):
    fit(TinyVAE(), gaussian_data(16), steps=3, batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "bound=" in err and "3/3" in err
    fit(TinyVAE(), gaussian_data(16), steps=3, batch_size=8, progress=False)
    assert capsys.readouterr().err == ""


def test_bad_options_are_all_reported():
    with pytest.raises(ValueError) as info:
        fit(Regression(), regression_data(8), batch_size=0, on_nonfinite="ignore", patience=3, lr=-1.0)
    msg = str(info.value)
    for culprit in ("batch_size", "on_nonfinite", "patience needs eval_data", "lr", "give epochs or steps"):
        assert culprit in msg
    with pytest.raises(ValueError, match="same first dimension"):
        fit(Regression(), (torch.zeros(4, 3), torch.zeros(5)), steps=1)
    with pytest.raises(ValueError, match="must be a DataLoader, a Dataset"):
        fit(Regression(), [1, 2, 3], steps=1)
    with pytest.raises(ValueError, match="scalar"):
        fit(_VectorLoss(), torch.zeros(4, 3), steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="monitor 'elbo'"):
        fit(TinyVAE(), gaussian_data(8), steps=1, eval_data=gaussian_data(4), monitor="elbo", progress=False)


class _VectorLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x @ self.w


def test_distributed_true_without_torchrun_says_how_to_launch(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        fit(Regression(), regression_data(8), steps=1, distributed=True, progress=False)


def test_dreg_model_trains_and_evaluates_without_gradients():
    # DReG reshapes gradients with hooks; the held-out evaluation runs under no_grad.
    model = TinyVAE(estimator=vt.estimators.dreg)
    hist = fit(model, gaussian_data(16), steps=2, batch_size=8, eval_data=gaussian_data(8, seed=3), progress=False)
    assert [e["step"] for e in hist.evals] == [2] and all(torch.isfinite(p).all() for p in model.parameters())
