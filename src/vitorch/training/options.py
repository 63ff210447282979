"""The options of `vitorch.training.fit`, checked together before anything runs.

Every problem is collected and reported in one ``ValueError`` naming each option, so a
long run never dies at its first evaluation or checkpoint because of a typo.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["FitOptions"]


@dataclass(frozen=True)
class FitOptions:
    """See `vitorch.training.fit` for the meaning of each field."""

    optimizer: torch.optim.Optimizer | Callable | None
    lr: float
    scheduler: object
    scheduler_interval: str
    epochs: int | None
    steps: int | None
    batch_size: int
    shuffle: bool
    drop_last: bool
    num_workers: int
    seed: int | None
    eval_data: object
    eval_every: int | None
    eval_fn: Callable | None
    eval_batch_size: int | None
    patience: int | None
    monitor: str | None
    mode: str | None
    min_delta: float
    restore_best: bool
    clip_grad_norm: float | None
    clip_grad_value: float | None
    on_nonfinite: str
    max_consecutive_skips: int
    checkpoint_dir: str | Path | None
    checkpoint_every: int | None
    keep_checkpoints: int | None
    resume: str | Path | None
    resume_overrides: Sequence[str]
    log_dir: str | Path | None
    progress: bool | None
    callbacks: Sequence[Callable]
    distributed: bool | str
    compile: bool | Mapping
    autocast_dtype: torch.dtype | None
    device: str | torch.device | None

    def __post_init__(self):
        reasons = []

        def positive_int(name: str, optional: bool = True, minimum: int = 1):
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
                reasons.append(f"{name} must be an integer >= {minimum}; got {v!r}")

        def positive_float(name: str, allow_zero: bool = False):
            v = getattr(self, name)
            if v is None:
                return
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
            if not ok or v != v or v == float("inf"):
                reasons.append(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}; got {v!r}")

        for name in ("epochs", "steps", "eval_every", "eval_batch_size", "patience", "checkpoint_every"):
            positive_int(name)
        positive_int("keep_checkpoints")
        positive_int("batch_size", optional=False)
        positive_int("num_workers", optional=False, minimum=0)
        positive_int("max_consecutive_skips", optional=False, minimum=0)
        positive_float("lr")
        positive_float("clip_grad_norm")
        positive_float("clip_grad_value")
        positive_float("min_delta", allow_zero=True)
        if self.epochs is None and self.steps is None:
            reasons.append("give epochs or steps (or both: the run stops at the first reached)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            reasons.append(f"seed must be an integer; got {self.seed!r}")
        if self.on_nonfinite not in ("raise", "skip"):
            reasons.append(f"on_nonfinite must be 'raise' or 'skip'; got {self.on_nonfinite!r}")
        if self.scheduler_interval not in ("step", "epoch"):
            reasons.append(f"scheduler_interval must be 'step' or 'epoch'; got {self.scheduler_interval!r}")
        if self.mode not in (None, "max", "min"):
            reasons.append(f"mode must be 'max' or 'min'; got {self.mode!r}")
        if self.optimizer is not None and not (
            isinstance(self.optimizer, torch.optim.Optimizer) or callable(self.optimizer)
        ):
            reasons.append(f"optimizer must be a torch Optimizer or a factory; got {type(self.optimizer).__name__}")
        if self.eval_data is None:
            for name in ("eval_every", "eval_fn", "patience", "monitor"):
                if getattr(self, name) is not None:
                    reasons.append(f"{name} needs eval_data")
            if self.restore_best:
                reasons.append("restore_best needs eval_data")
        if self.eval_fn is not None and not callable(self.eval_fn):
            reasons.append(f"eval_fn must be callable; got {type(self.eval_fn).__name__}")
        # keep_checkpoints has a default (3), so only checkpoint_every asks for a directory.
        if self.checkpoint_dir is None and self.checkpoint_every is not None:
            reasons.append("checkpoint_every needs checkpoint_dir")
        overrides = self.resume_overrides
        if isinstance(overrides, str) or not isinstance(overrides, Sequence):
            reasons.append(f"resume_overrides must be a tuple of setting names, e.g. ('lr',); got {overrides!r}")
        elif not all(isinstance(n, str) for n in overrides):
            reasons.append(f"resume_overrides must hold setting names (strings); got {overrides!r}")
        elif overrides and self.resume is None:
            reasons.append("resume_overrides needs resume")
        if not isinstance(self.callbacks, Sequence) or not all(callable(c) for c in self.callbacks):
            reasons.append("callbacks must be a sequence of callables")
        if not isinstance(self.compile, (bool, Mapping)):
            reasons.append(f"compile must be a bool or a dict of torch.compile options; got {self.compile!r}")
        if self.autocast_dtype not in (None, torch.bfloat16, torch.float16):
            reasons.append(f"autocast_dtype must be None, torch.bfloat16 or torch.float16; got {self.autocast_dtype!r}")
        if self.distributed not in (True, False, "auto"):
            reasons.append(f"distributed must be True, False or 'auto'; got {self.distributed!r}")
        if reasons:
            raise ValueError("invalid fit options:\n  - " + "\n  - ".join(reasons))
