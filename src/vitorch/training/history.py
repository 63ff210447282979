"""What `vitorch.training.fit` returns: per-step and per-evaluation records.

Records are flat dicts of plain numbers, so the history survives a
``torch.load(weights_only=True)`` round trip inside a checkpoint and writes to CSV
or JSON without conversion.  Files are written atomically (a temporary file in the
same directory, flushed to disk, then renamed over the old one), so a crash while
writing leaves the previous file whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .files import write_atomically

__all__ = ["History"]


@dataclass
class History:
    """The record of one `vitorch.training.fit` run (continued across resumes).

    Attributes:
        steps: one dict per optimizer step (attempted update): ``step`` (1-based),
            ``epoch`` (0-based), ``loss``, ``bound`` (mean over the batch, when the model
            returns a `vitorch.LossOutput`), ``lr`` (first parameter group),
            ``grad_norm`` (2-norm of all gradients before clipping), ``skipped`` (1 if a non-finite step
            was skipped), ``impossible_data`` (with a bound: data of the batch whose bound is not
            finite, at the ``-1e30`` floor when every particle is impossible) and ``time`` (seconds
            since the run started; not reproducible).  Under DDP ``loss`` and ``bound`` are global:
            averaged over every rank's batch.
        evals: one dict per evaluation: ``step``, ``epoch`` and the evaluation metrics, plus
            ``impossible_data`` when held-out data had no finite bound and ``skipped = 1`` when a
            non-finite evaluation was set aside (``on_nonfinite="skip"``).
        best_step: step of the best monitored evaluation, or ``None``.
        best_value: that evaluation's monitored value, or ``None``.
        stop_reason: why the run ended: ``"epochs"``, ``"steps"``, ``"early_stopping"``
            or ``"callback"``.
        skipped: total number of skipped non-finite steps.
        skipped_evals: total number of non-finite evaluations set aside.
        impossible_data: total number of training data, over all steps, without a finite bound.

    References:
        Prechelt, *Early Stopping - But When?* (Neural Networks: Tricks of the Trade, 1998).
    """

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_value: float | None = None
    stop_reason: str | None = None
    skipped: int = 0
    skipped_evals: int = 0
    impossible_data: int = 0

    def column(self, name: str, evals: bool = False) -> list[float]:
        """The values of one field over the steps (or the evaluations), NaN where absent."""
        rows = self.evals if evals else self.steps
        return [row.get(name, math.nan) for row in rows]

    def state_dict(self) -> dict:
        """Plain containers only, loadable with ``torch.load(weights_only=True)``."""
        return {
            "steps": [dict(r) for r in self.steps],
            "evals": [dict(r) for r in self.evals],
            "best_step": -1 if self.best_step is None else self.best_step,
            "best_value": math.nan if self.best_value is None else self.best_value,
            "stop_reason": self.stop_reason or "",
            "skipped": self.skipped,
            "skipped_evals": self.skipped_evals,
            "impossible_data": self.impossible_data,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> History:
        best_step = int(state["best_step"])
        best_value = float(state["best_value"])
        return cls(
            steps=[dict(r) for r in state["steps"]],
            evals=[dict(r) for r in state["evals"]],
            best_step=None if best_step < 0 else best_step,
            best_value=None if math.isnan(best_value) else best_value,
            stop_reason=state["stop_reason"] or None,
            skipped=int(state["skipped"]),
            # absent from checkpoints written before these counters existed
            skipped_evals=int(state.get("skipped_evals", 0)),
            impossible_data=int(state.get("impossible_data", 0)),
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the whole history as one JSON object (non-finite numbers as ``null``)."""
        payload = {
            "steps": [_finite_or_none(r) for r in self.steps],
            "evals": [_finite_or_none(r) for r in self.evals],
            "best_step": self.best_step,
            "best_value": self.best_value,
            "stop_reason": self.stop_reason,
            "skipped": self.skipped,
            "skipped_evals": self.skipped_evals,
            "impossible_data": self.impossible_data,
        }
        return write_atomically(path, json.dumps(payload, indent=1, allow_nan=False))

    def to_csv(self, path: str | Path, evals: bool = False) -> Path:
        """Write the steps (or, with ``evals=True``, the evaluations) as CSV, one row each."""
        rows = self.evals if evals else self.steps
        columns: list[str] = []
        for row in rows:  # union of keys in first-seen order: eval metrics may vary
            columns += [k for k in row if k not in columns]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        return write_atomically(path, text.getvalue())

    def write(self, directory: str | Path) -> None:
        """Write ``steps.csv``, ``evals.csv`` and ``history.json`` into ``directory``."""
        directory = Path(directory)
        self.to_csv(directory / "steps.csv")
        self.to_csv(directory / "evals.csv", evals=True)
        self.to_json(directory / "history.json")


def _finite_or_none(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
