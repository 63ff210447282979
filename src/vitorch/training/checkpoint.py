"""Checkpoints of a `vitorch.training.fit` run: write, find, read and check.

A checkpoint is one ``torch.save`` file of plain containers (dicts, lists, tensors,
numbers, strings), read back only with ``torch.load(weights_only=True)`` so that
loading never unpickles arbitrary objects.  It carries two checks:

* ``fingerprint``: a hash of the model's ``state_dict`` layout (each parameter's and
  buffer's name, shape and dtype; each non-tensor entry's name and type, such as the
  ``_extra_state`` of a module with ``get_extra_state``), so a checkpoint from another
  model is refused with the differences listed;
* ``digest``: a SHA-256 of everything else in canonical order, so a truncated or
  corrupted file is refused rather than silently resumed.  The digest is unkeyed: it
  detects accidents, not tampering (whoever can edit the file can recompute it).  The
  security boundary is ``weights_only=True``, which never runs code from the file.

Since format 2 a checkpoint also stores the run's configuration (``config``), which
`vitorch.training.resume` compares with the resuming run.  Format-1 files still
load; resuming from one warns that the configuration cannot be checked.

A checkpoint reaches the disk before it takes its name: the temporary file is fsynced,
renamed over the final name (``os.replace``, atomic), and the directory fsynced, so a
crash or power loss leaves either the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from .files import fsync_directory

__all__ = ["save_checkpoint", "load_checkpoint", "find_checkpoint", "fingerprint", "copy_state", "FORMAT"]

FORMAT = "vitorch.fit/2"
_READABLE = ("vitorch.fit/1", FORMAT)  # format 1: no "config" entry
_REQUIRED = ("format", "fingerprint", "digest", "model", "optimizer", "scheduler", "rng", "data", "loop", "history")
_NAME = re.compile(r"^step-(\d+)\.pt$")


def _layout(value) -> str:
    """A ``state_dict`` entry's layout: shape and dtype of a tensor, the type of anything else."""
    if isinstance(value, Tensor):
        return f"{tuple(value.shape)}:{value.dtype}"
    return f"<{type(value).__name__}>"  # extra state: its contents may change, its kind may not


def fingerprint(state: dict) -> str:
    """Hash of the layout of a model's ``state_dict`` (not the values).

    Tensors contribute their name, shape and dtype; non-tensor entries (the
    ``_extra_state`` of modules with ``get_extra_state``) their name and type.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(f"{name}:{_layout(state[name])};".encode())
    return h.hexdigest()


def copy_state(obj, device: torch.device | None = None):
    """A deep copy of a ``state_dict`` (tensors detached and cloned, optionally moved to ``device``).

    Containers are copied entry by entry, so extra state (dicts, lists, numbers from
    ``get_extra_state``) is copied with its tensors; later training never changes the copy.
    """
    if isinstance(obj, Tensor):
        obj = obj.detach()
        return obj.to(device, copy=True) if device is not None else obj.clone()
    if isinstance(obj, dict):
        out = type(obj)((k, copy_state(v, device)) for k, v in obj.items())
        metadata = getattr(obj, "_metadata", None)  # module versions, read by load_state_dict
        if metadata is not None:
            out._metadata = copy.deepcopy(metadata)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_state(v, device) for v in obj)
    return copy.deepcopy(obj)


def _update(h, obj) -> None:
    """Feed ``obj`` to the hash in a canonical order; types are tagged so 1 != 1.0 != True."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _update(h, key)
            _update(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _update(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"checkpoints hold plain containers only; got {type(obj).__name__}")


def _digest(payload: dict) -> str:
    h = hashlib.sha256()
    _update(h, {k: v for k, v in payload.items() if k != "digest"})
    return h.hexdigest()


def save_checkpoint(payload: dict, directory: str | Path, step: int, keep: int | None = None) -> Path:
    """Write ``payload`` as ``directory/step-<step>.pt`` atomically; keep the newest ``keep`` files.

    Args:
        payload: the run's state (see `vitorch.training.fit`); ``format``,
            ``fingerprint`` and ``digest`` are added here.
        directory: created if missing.
        step: the optimizer step the state follows.
        keep: how many checkpoints to keep (oldest removed first, only after the new
            one is on disk); ``None`` keeps all.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, format=FORMAT, fingerprint=fingerprint(payload["model"]))
    payload["digest"] = _digest(payload)
    path = directory / f"step-{step:09d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(directory)  # the rename itself survives a power loss
    if keep is not None:
        for old in _listing(directory)[:-keep]:
            old.unlink()
    return path


def _listing(directory: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the newest ``step-*.pt`` in that directory."""
    path = Path(path)
    if path.is_dir():
        listing = _listing(path)
        if not listing:
            raise FileNotFoundError(f"no checkpoint (step-*.pt) in directory {path}")
        return listing[-1]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | Path, model: nn.Module) -> dict:
    """Read a checkpoint for ``model`` with ``weights_only=True`` and check it.

    Args:
        path: a checkpoint file, or a directory (its newest checkpoint is read).
        model: the module the checkpoint must match (names, shapes, dtypes).

    Returns:
        The payload dict (tensors on the CPU).

    Raises:
        ValueError: if the file is truncated or not a checkpoint, holds objects
            ``weights_only`` refuses, misses entries, fails its digest (corrupted or
            edited), or belongs to a model with other parameters (the differences are listed).

    References:
        PyTorch documentation, ``torch.load(weights_only=True)``:
        https://pytorch.org/docs/stable/generated/torch.load.html.
        Paszke et al., *PyTorch: An Imperative Style, High-Performance Deep Learning Library* (NeurIPS 2019).
    """
    path = find_checkpoint(path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        raise ValueError(
            f"cannot read checkpoint {path}: it is not a complete torch.save archive (the file is truncated, "
            "corrupted or not a vitorch.fit checkpoint)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # the zip, pickle and OS layers each raise their own kind
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused is not None:
            # torch's own text suggests weights_only=False "if you trust the source": vitorch.fit
            # never writes such objects, so this file was altered or is not one of its checkpoints.
            raise ValueError(
                f"checkpoint {path} holds a Python object ({refused.group(1)}) that torch.load(weights_only=True) "
                "refuses to unpickle; vitorch.fit checkpoints hold only tensors, numbers, strings and containers, "
                "so it was not written by vitorch.fit or was altered, and it is not loaded"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read checkpoint {path}: {first} (the file is truncated, corrupted or not a "
            "vitorch.fit checkpoint; it is only ever read with torch.load(weights_only=True))"
        ) from None
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {path} holds a {type(payload).__name__}, not a vitorch.fit checkpoint dict")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} is not a vitorch.fit checkpoint: missing entries {missing}")
    if payload["format"] not in _READABLE:
        raise ValueError(f"checkpoint {path} has format {payload['format']!r}; this version reads {list(_READABLE)}")
    if payload["format"] == FORMAT and "config" not in payload:
        raise ValueError(f"checkpoint {path} is not a vitorch.fit checkpoint: missing entries ['config']")
    if payload["digest"] != _digest(payload):
        raise ValueError(
            f"checkpoint {path} fails its SHA-256 digest: it was corrupted or modified after it was written"
        )
    _check_model(path, payload, model)
    return payload


def _check_model(path: Path, payload: dict, model: nn.Module) -> None:
    ours = model.state_dict()
    theirs = payload["model"]
    if payload["fingerprint"] == fingerprint(ours) and fingerprint(theirs) == payload["fingerprint"]:
        return
    problems = []
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing:
        problems.append(f"missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"not in the model: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    for name in sorted(set(ours) & set(theirs)):
        a, b = _layout(ours[name]), _layout(theirs[name])
        if a != b:
            problems.append(f"{name}: checkpoint {b}, model {a}")
    if not problems:
        problems.append("the stored fingerprint does not match the stored parameters")
    raise ValueError(
        f"checkpoint {path} was written for another model (parameter fingerprint differs):\n  - "
        + "\n  - ".join(problems[:12])
    )
