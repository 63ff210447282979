"""docs/errors.md tells the truth: every row of its tables raises the documented error with the
documented message, every row has a trigger here (and every trigger a row), and every code
block on the page runs as written."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from pathlib import Path

import pytest
import torch
from fit_models import Floored, Regression, TinyVAE, floored_data, regression_data
from torch import nn

import vitorch as vt
from vitorch.models import gp, ssm
from vitorch.training import fit, load_checkpoint

PAGE = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
ROW = re.compile(r"^\| (?P<case>[^|]+?) \| `(?P<error>\w+)` \| `(?P<start>[^`]+)` \|(?P<lists>[^|]*)\|$", re.M)


def rows() -> dict[str, tuple[str, str, list[str]]]:
    found = {}
    for m in ROW.finditer(PAGE.read_text()):
        found[m["case"]] = (m["error"], m["start"], re.findall(r"`([^`]+)`", m["lists"]))
    return found


def pattern(text: str) -> str:
    """A documented message as a regex: ``<...>`` stands for any text (a path, a number, a name)."""
    return "".join(".*?" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]+>)", text))


# ----- what makes each row happen ---------------------------------------------------


def _unstable_kalman():
    eye = torch.eye(2, dtype=torch.float64)
    h = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    return ssm.LinearGaussianSSM(
        1.5 * eye, eye, h, torch.eye(1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), eye
    )


def q(batch=(2,), dim=3):
    return vt.DiagNormal(torch.zeros(*batch, dim), torch.ones(*batch, dim))


class VectorLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x @ self.w


class Text(VectorLoss):
    def forward(self, x):
        return "loss"


class NaNLoss(Regression):
    def forward(self, batch):
        return super().forward(batch) * math.nan


class NaNGrad(Regression):
    def forward(self, batch):
        return super().forward(batch) + torch.sqrt(self.lin.bias - self.lin.bias.detach()).sum()


def checkpoint(tmp: Path, **options) -> Path:
    fit(Regression(), regression_data(40), steps=7, batch_size=8, lr=0.05, seed=3, checkpoint_dir=tmp,
        progress=False, **options)  # fmt: skip
    return tmp / "step-000000007.pt"


def resume(tmp: Path, **changes):
    options = dict(steps=10, batch_size=8, lr=0.05, seed=3, resume=tmp, progress=False)
    options.update(changes)
    fit(Regression(), regression_data(options.pop("n", 40)), **options)


def edited(tmp: Path, edit) -> Path:
    path = checkpoint(tmp)
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


TRIGGERS = {
    # families
    "a scale <= 0, an infinite scale or a NaN parameter": lambda tmp: vt.DiagNormal(
        torch.zeros(2), torch.tensor([1.0, -1.0])
    ),
    "parameter shapes that do not broadcast": lambda tmp: vt.DiagNormal(torch.zeros(3), torch.ones(2)),
    "a scale_tril that is not lower triangular with a positive diagonal": lambda tmp: vt.FullRankNormal(
        torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    ),
    "a concentration <= 0": lambda tmp: vt.families.Dirichlet(torch.tensor([1.0, 0.0])),
    "an integer parameter": lambda tmp: vt.DiagNormal(torch.zeros(3, dtype=torch.int64), torch.ones(3)),
    "parameters of different floating dtypes": lambda tmp: vt.DiagNormal(
        torch.zeros(3, dtype=torch.float32), torch.ones(3, dtype=torch.float64)
    ),
    "parameters with an event of size 0": lambda tmp: vt.DiagNormal(torch.zeros(0), torch.ones(0)),
    "a log_joint that returns +inf (a bug in the model, such as a zero scale)": lambda tmp: vt.loss(
        lambda z: torch.full(z.shape[:-1], math.inf), q(), 2
    ),
    "a linear-Gaussian model whose unobserved state direction grows (an eigenvalue of F above 1 that H cannot see)": (
        lambda tmp: _unstable_kalman().log_prob(torch.randn(100, 1, dtype=torch.float64))
    ),
    "a value outside the support, or NaN, in log_prob": lambda tmp: q((), 2).log_prob(torch.tensor([math.nan, 0.0])),
    # vt.loss
    "K < 1, or K not an integer": lambda tmp: vt.loss(lambda z: z.sum(-1), q(), 0),
    "STL with an importance-weighted bound": lambda tmp: vt.loss(
        lambda z: z.sum(-1), q(), 4, vt.objectives.iwae, vt.estimators.stl
    ),
    "MIWAE's M not dividing K": lambda tmp: vt.loss(lambda z: z.sum(-1), q(), 5, vt.objectives.miwae(2)),
    "an estimator factory passed without calling it": lambda tmp: vt.loss(
        lambda z: z.sum(-1), q(), 2, vt.objectives.elbo, vt.estimators.score
    ),
    "an empty batch": lambda tmp: vt.loss(lambda z: z.sum(-1), q((0,)), 2),
    "a log_joint of the wrong shape": lambda tmp: vt.loss(lambda z: z.sum(), q(), 2),
    # fit options and data
    "bad option values (all of them are listed)": lambda tmp: fit(
        Regression(), regression_data(8), batch_size=0, lr=-1.0
    ),  # fmt: skip
    "resume_overrides given as one string": lambda tmp: fit(
        Regression(), regression_data(8), steps=1, resume=tmp, resume_overrides="lr"
    ),  # fmt: skip
    "data of another kind": lambda tmp: fit(Regression(), [1, 2, 3], steps=1),
    "tensors of different lengths": lambda tmp: fit(Regression(), (torch.zeros(4, 3), torch.zeros(5)), steps=1),
    "empty data": lambda tmp: fit(Regression(), (torch.zeros(0, 3), torch.zeros(0)), steps=1),
    "data=None without steps": lambda tmp: fit(Regression(), None, epochs=1),
    "a model that is not an nn.Module": lambda tmp: fit(lambda b: b, torch.zeros(4, 3), steps=1),
    "a model without trainable parameters": lambda tmp: fit(nn.Identity(), torch.zeros(4, 3), steps=1),
    "a forward returning neither a LossOutput nor a tensor": lambda tmp: fit(
        Text(), torch.zeros(4, 3), steps=1, batch_size=2, progress=False
    ),  # fmt: skip
    "a loss that is not a scalar": lambda tmp: fit(
        VectorLoss(), torch.zeros(4, 3), steps=1, batch_size=2, progress=False
    ),  # fmt: skip
    "a monitor that the evaluation does not produce": lambda tmp: fit(
        TinyVAE(), torch.randn(8, 4), steps=1, eval_data=torch.randn(4, 4), monitor="elbo", progress=False
    ),
    "distributed=True outside torchrun": lambda tmp: fit(
        Regression(), regression_data(8), steps=1, distributed=True, progress=False
    ),  # fmt: skip
    # fit faults
    "a NaN or infinite loss": lambda tmp: fit(NaNLoss(), regression_data(8), steps=2, batch_size=4, progress=False),
    "a NaN or infinite gradient with a finite loss": lambda tmp: fit(
        NaNGrad(), regression_data(8), steps=2, batch_size=4, progress=False
    ),  # fmt: skip
    "impossible data: a datum whose bound sits at the -1e30 floor": lambda tmp: fit(
        Floored(), floored_data(bad=[9]), steps=4, batch_size=4, shuffle=False, progress=False
    ),
    "more than max_consecutive_skips bad steps in a row": lambda tmp: fit(
        NaNLoss(),
        regression_data(16),
        steps=8,
        batch_size=4,
        on_nonfinite="skip",
        max_consecutive_skips=2,
        progress=False,
    ),
    "a NaN or infinite held-out metric": lambda tmp: fit(
        Regression(),
        regression_data(8),
        steps=2,
        batch_size=8,
        eval_data=regression_data(4),
        eval_fn=lambda model, loader: {"score": math.nan},
        progress=False,
    ),
    "held-out data whose bound sits at the floor": lambda tmp: fit(
        Floored(), floored_data(), steps=2, batch_size=8, eval_data=floored_data(8, bad=[5]), progress=False
    ),
    "an update that diverges (lr=1e30, say)": lambda tmp: fit(
        Regression(),
        regression_data(16),
        steps=3,
        batch_size=16,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=1e308),
        progress=False,
    ),
    # checkpoints
    "resume from a directory without checkpoints": lambda tmp: resume(tmp),
    "resume from a file that does not exist": lambda tmp: resume(tmp / "step-000000001.pt"),
    "a truncated or unreadable file": lambda tmp: load_checkpoint(
        edited(tmp, lambda p: None).write_bytes(b"not a checkpoint") and tmp, Regression()
    ),
    "a file holding other Python objects": lambda tmp: load_checkpoint(
        edited(tmp, lambda p: p["loop"].update(hook=Evil())), Regression()
    ),
    "a file whose digest does not match": lambda tmp: load_checkpoint(
        edited(tmp, lambda p: p["model"]["lin.weight"].add_(1e-12)), Regression()
    ),
    "a file with missing entries": lambda tmp: load_checkpoint(edited(tmp, lambda p: p.pop("rng")), Regression()),
    "a checkpoint of another model": lambda tmp: load_checkpoint(checkpoint(tmp), Regression(d=5)),
    "resume with another batch size, data length or learning rate": lambda tmp: (
        checkpoint(tmp) and resume(tmp, batch_size=4, n=30, lr=0.01)
    ),
    "resume with another optimizer type": lambda tmp: (
        checkpoint(tmp) and resume(tmp, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.05))
    ),
    "resume changing the data mid-epoch, even when named": lambda tmp: (
        checkpoint(tmp) and resume(tmp, n=48, resume_overrides=("data_length",))
    ),
    "resume_overrides naming something else": lambda tmp: (
        checkpoint(tmp) and resume(tmp, resume_overrides=("learning_rate",))
    ),
    # kernels
    "forcing a backend an op cannot run": lambda tmp: vt.kernels.diag_normal_rsample_and_log_prob(
        torch.zeros(3, 2), torch.ones(3, 2), (5,), backend="triton"
    ),
    "an unknown backend name": lambda tmp: vt.kernels.diag_normal_rsample_and_log_prob(
        torch.zeros(3, 2), torch.ones(3, 2), (5,), backend="warp"
    ),
    # GP linear algebra
    "a kernel matrix with NaN": lambda tmp: gp.jittered_cholesky(
        torch.tensor([[1.0, math.nan], [math.nan, 1.0]]), "K_mm"
    ),  # fmt: skip
    "a kernel matrix not positive definite after jitter": lambda tmp: gp.jittered_cholesky(
        torch.tensor([[1.0, 0.0], [0.0, -1.0]]), "K_mm"
    ),
}


def test_every_row_has_a_trigger_and_every_trigger_a_row():
    documented = set(rows())
    assert documented - set(TRIGGERS) == set(), "rows with no trigger in this test"
    assert set(TRIGGERS) - documented == set(), "triggers with no row on docs/errors.md"


@pytest.mark.filterwarnings("ignore::vitorch.models.gp.JitterWarning")
@pytest.mark.parametrize("case", sorted(TRIGGERS))
def test_the_row_is_what_happens(case, tmp_path, monkeypatch):
    triton_may_run = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET")
    if case == "forcing a backend an op cannot run" and triton_may_run:
        pytest.skip("the Triton backend may run here")
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    error, start, lists = rows()[case]
    with pytest.raises(Exception) as info:  # noqa: PT011 -- the type is checked by name below
        TRIGGERS[case](tmp_path)
    assert type(info.value).__name__ == error, f"{case}: {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert re.match(pattern(start), message, re.S), f"{case}: the message starts otherwise:\n{message}"
    for item in lists:
        assert re.search(pattern(item), message, re.S), f"{case}: {item!r} is not in:\n{message}"


def blocks():
    found = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    return [pytest.param(b, id=f"block{i}") for i, b in enumerate(found)]


@pytest.mark.parametrize("code", blocks())
def test_every_code_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<docs/errors.md>", "exec"), {})
