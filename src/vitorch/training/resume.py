"""What a resumed `vitorch.training.fit` run must share with the checkpointed one.

A checkpoint stores the run's *configuration*: everything that decides which batches
come next (the number of processes, the batch size, the data set's length, shuffling,
``drop_last``, the data-order seed, the loader's workers) and which updates they make
(the optimizer's type, its parameter groups and hyper-parameters as constructed, the
scheduler's type and interval, gradient clipping, the autocast dtype).  Resuming with
another configuration would silently skip the wrong batches or ignore a new learning
rate, so every difference is listed in one ``ValueError``.

``fit(..., resume=path, resume_overrides=names)`` accepts the named differences where
they are safe:

* any optimizer hyper-parameter (``"lr"``, ``"weight_decay"``, ``"betas"``,
  ``"momentum"``...), ``"clip_grad_norm"``, ``"clip_grad_value"``,
  ``"autocast_dtype"`` and ``"num_workers"``: they apply from the next step;
* the data (``"batch_size"``, ``"data_length"``, ``"shuffle"``, ``"drop_last"``,
  ``"seed"``) only when the checkpoint sits at an epoch boundary, where no batch of the
  old order is still owed;
* never ``"world"``, ``"optimizer"`` (another type cannot take the saved state),
  ``"param_groups"``, ``"scheduler"`` or ``"scheduler_interval"``.

A new ``lr`` is the new *base* rate: with a scheduler the current rate keeps the
schedule's factor so far (``lr_now * new / old``) and the scheduler's ``base_lrs``
become the new rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from .options import FitOptions

__all__ = ["run_config", "check_config", "apply_overrides", "optimizer_state_fits", "DATA_KEYS", "NEVER"]

DATA_KEYS = ("batch_size", "data_length", "shuffle", "drop_last", "seed")
ALWAYS = ("clip_grad_norm", "clip_grad_value", "autocast_dtype", "num_workers")
NEVER = ("world", "optimizer", "param_groups", "scheduler", "scheduler_interval")
_HINTS = {
    "world": " (resume with the same number of processes)",
    "scheduler": " (pass a scheduler of the checkpoint's type exactly when the checkpointed run had one)",
}
# Implementation switches of torch's optimizers: the same update whatever their value.
_IMPLEMENTATION = ("params", "foreach", "fused", "capturable", "differentiable", "initial_lr")


def _plain(value):
    """A hyper-parameter as a plain, comparable value (tensors to floats, tuples to lists)."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<{type(value).__qualname__}>"  # its kind, not its repr (which may hold a memory address)


def _qualname(obj) -> str:
    return "" if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def optimizer_config(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's type, group layout and hyper-parameters; call before a scheduler changes ``lr``."""
    groups = optimizer.param_groups
    return {
        "optimizer": _qualname(optimizer),
        "param_groups": [sum(p.numel() for p in g["params"]) for g in groups],
        "hparams": [
            # A scheduler built before fit saw the optimizer keeps the base rate in initial_lr.
            {k: _plain(g.get("initial_lr", v) if k == "lr" else v) for k, v in g.items() if k not in _IMPLEMENTATION}
            for g in groups
        ],
    }


def _batching(loader: DataLoader) -> dict:
    batches = loader.sampler if isinstance(loader.sampler, BatchSampler) else loader.batch_sampler
    order = batches.sampler if isinstance(batches, BatchSampler) else loader.sampler
    if isinstance(order, DistributedSampler):
        shuffle = bool(order.shuffle)
    elif isinstance(order, (RandomSampler, SequentialSampler)):
        shuffle = isinstance(order, RandomSampler)
    else:
        shuffle = type(order).__name__
    try:
        length = len(loader.dataset)
    except TypeError:
        length = -1
    return {
        "batch_size": int(getattr(batches, "batch_size", None) or loader.batch_size or -1),
        "data_length": length,
        "shuffle": shuffle,
        "drop_last": bool(getattr(batches, "drop_last", loader.drop_last)),
        "num_workers": int(loader.num_workers),
    }


def run_config(
    opt: FitOptions, loader: DataLoader, optimizer_cfg: dict, scheduler, seed: int, world: int, no_data: bool
) -> dict:
    """The configuration a checkpoint stores (plain values only).

    ``no_data``: the loader of ``fit(model, None, steps=...)``, whose length is the step
    count (which a resumed run may raise), so its length is not part of the configuration.
    """
    data = _batching(loader)
    if no_data:
        data.update(batch_size=-1, data_length=-1)
    return {
        "world": int(world),
        **data,
        "seed": int(seed),
        **optimizer_cfg,
        "scheduler": _qualname(scheduler),
        "scheduler_interval": opt.scheduler_interval if scheduler is not None else "",
        "clip_grad_norm": None if opt.clip_grad_norm is None else float(opt.clip_grad_norm),
        "clip_grad_value": None if opt.clip_grad_value is None else float(opt.clip_grad_value),
        "autocast_dtype": "" if opt.autocast_dtype is None else str(opt.autocast_dtype),
    }


def _show(value) -> str:
    if value == "" or value is None:
        return "none"
    return repr(value)


def _differences(stored: dict, current: dict) -> list[tuple[str, str]]:
    """``(name, "name: checkpoint a, this run b")`` for each differing entry; hyper-parameters by name."""
    out = []
    for key in current:
        if key == "hparams" or key not in stored:
            continue
        if key in ("optimizer", "param_groups") or stored[key] == current[key]:
            continue
        hint = _HINTS.get(key, "")
        out.append((key, f"{key}: checkpoint {_show(stored[key])}, this run {_show(current[key])}{hint}"))
    if stored.get("optimizer") != current["optimizer"]:
        out.append(
            (
                "optimizer",
                f"optimizer: checkpoint {stored.get('optimizer')}, this run {current['optimizer']} (an optimizer's "
                "state cannot be loaded into another type: resume with the checkpoint's optimizer, or start a new "
                "run from its weights, vt.training.load_checkpoint(path, model)['model'])",
            )
        )
        return out
    if stored.get("param_groups") != current["param_groups"]:
        out.append(
            (
                "param_groups",
                f"param_groups: checkpoint {stored.get('param_groups')} parameter entries per group, "
                f"this run {current['param_groups']}",
            )
        )
        return out
    several = len(current["hparams"]) > 1
    for i, (old, new) in enumerate(zip(stored["hparams"], current["hparams"])):
        for name in sorted(set(old) | set(new)):
            a, b = old.get(name, "<absent>"), new.get(name, "<absent>")
            if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
                group = f" (group {i})" if several else ""
                out.append((name, f"{name}{group}: checkpoint {_show(a)}, this run {_show(b)}"))
    return out


def check_config(
    stored: dict, current: dict, overrides: Sequence[str], at_boundary: bool, where: str
) -> tuple[list[str], list[str]]:
    """Raise one ``ValueError`` listing every difference ``overrides`` does not allow.

    Args:
        stored: the checkpoint's configuration.
        current: this run's (`run_config`).
        overrides: names the caller allows to differ (``fit``'s ``resume_overrides``).
        at_boundary: whether the checkpoint sits at an epoch boundary.
        where: the checkpoint, for the message.

    Returns:
        ``(hyper-parameter names, data names)`` that differ and are overridden.
    """
    overrides = list(overrides)
    hparam_names = {k for g in current["hparams"] for k in g} | {k for g in stored.get("hparams", []) for k in g}
    known = set(DATA_KEYS) | set(ALWAYS) | set(NEVER) | hparam_names
    problems = [
        f"resume_overrides names {name!r}, which is not a setting of this run (settings: {sorted(known)})"
        for name in overrides
        if name not in known
    ]
    problems += [f"resume_overrides names {name!r}, which can never change on resume" for name in overrides
                 if name in NEVER]  # fmt: skip
    applied_h, applied_d = [], []
    for name, text in _differences(stored, current):
        if name in NEVER:
            problems.append(text)
        elif name not in overrides:
            problems.append(f"{text} (allowed with resume_overrides=({name!r},)" + (")" if name not in DATA_KEYS else
                            ", only at an epoch boundary)"))  # fmt: skip
        elif name in DATA_KEYS and not at_boundary:
            problems.append(f"{text} (a data change needs a checkpoint at an epoch boundary; this one is mid-epoch)")
        elif name in hparam_names:
            applied_h.append(name)
        elif name in DATA_KEYS:
            applied_d.append(name)
    if problems:
        raise ValueError(
            f"resume: this run differs from the checkpointed one ({where}):\n  - " + "\n  - ".join(problems)
        )
    return sorted(set(applied_h)), applied_d


def apply_overrides(optimizer: torch.optim.Optimizer, scheduler, stored: dict, current: dict, names: list[str]):
    """Put this run's values of the overridden hyper-parameters into the loaded optimizer (and scheduler)."""
    for i, group in enumerate(optimizer.param_groups):
        for name in names:
            new = current["hparams"][i].get(name)
            if name == "lr":
                old = stored["hparams"][i]["lr"]
                # Keep the schedule's factor so far; without a scheduler lr_now == old.
                group["lr"] = group["lr"] * (new / old) if old else new
                if "initial_lr" in group:
                    group["initial_lr"] = new
                if scheduler is not None and hasattr(scheduler, "base_lrs"):
                    scheduler.base_lrs[i] = new
            elif isinstance(group.get(name), tuple):
                group[name] = tuple(new)
            else:
                group[name] = new


def optimizer_state_fits(state: dict, optimizer: torch.optim.Optimizer) -> str | None:
    """Why a saved optimizer ``state_dict`` cannot belong to ``optimizer``'s type, or ``None``.

    For checkpoints without a stored configuration: torch loads another type's state
    without complaint and fails at the first step (``KeyError: 'momentum'``); the
    hyper-parameter names of the groups tell the types apart.
    """
    saved = [set(g) - set(_IMPLEMENTATION) for g in state.get("param_groups", [])]
    ours = [set(g) - set(_IMPLEMENTATION) for g in optimizer.param_groups]
    if len(saved) != len(ours):
        return f"{len(saved)} parameter group(s) in the checkpoint, {len(ours)} in this run's optimizer"
    for old, new in zip(saved, ours):
        if old != new:
            return (
                f"its hyper-parameters {sorted(old)} are not those of this run's {type(optimizer).__name__} "
                f"{sorted(new)}: it was written by another optimizer type"
            )
    return None
