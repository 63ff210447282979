"""Checkpoints and logs reach the disk whole: fsync before the rename, atomic history files, bounded disk use."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from fit_models import Regression, regression_data

from vitorch.training import fit, load_checkpoint
from vitorch.training.history import History


@pytest.fixture
def disk_events(monkeypatch):
    """Record fsync (of a file or a directory) and os.replace calls, in order."""
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events


def test_a_checkpoint_is_fsynced_before_its_rename_and_its_directory_after(tmp_path, disk_events):
    fit(Regression(), regression_data(8), steps=1, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    assert disk_events == [("fsync", "file"), ("replace", "step-000000001.pt"), ("fsync", "dir")]


def test_history_files_are_written_atomically(tmp_path, disk_events):
    History(steps=[{"step": 1, "loss": 0.5}]).write(tmp_path)
    for name in ("steps.csv", "evals.csv", "history.json"):
        i = disk_events.index(("replace", name))
        assert disk_events[i - 1] == ("fsync", "file") and disk_events[i + 1] == ("fsync", "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evals.csv", "history.json", "steps.csv"]


def test_a_failed_history_write_leaves_the_previous_file(tmp_path, monkeypatch):
    History(steps=[{"step": 1, "loss": 0.5}]).to_json(tmp_path / "history.json")
    before = (tmp_path / "history.json").read_text()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        History(steps=[{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]).to_json(tmp_path / "history.json")
    assert (tmp_path / "history.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # no temporary file left


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary_file(tmp_path, monkeypatch):
    data = regression_data(8)
    fit(Regression(), data, steps=1, batch_size=8, checkpoint_dir=tmp_path, progress=False)

    def torn(obj, f, *args, **kwargs):
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else f as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="Input/output error"):
        fit(Regression(), data, steps=2, batch_size=8, checkpoint_dir=tmp_path, resume=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000001.pt"]
    load_checkpoint(tmp_path, Regression())


def test_only_the_newest_three_checkpoints_are_kept_by_default(tmp_path):
    fit(Regression(), regression_data(16), steps=9, batch_size=4, checkpoint_dir=tmp_path / "default",
        checkpoint_every=2, progress=False)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == [
        "step-000000006.pt", "step-000000008.pt", "step-000000009.pt"]  # fmt: skip
    fit(Regression(), regression_data(16), steps=9, batch_size=4, checkpoint_dir=tmp_path / "all",
        checkpoint_every=2, keep_checkpoints=None, progress=False)  # fmt: skip
    assert len(list((tmp_path / "all").iterdir())) == 5


def test_keep_checkpoints_without_a_directory_is_harmless():
    # keep_checkpoints has a default now, so it no longer asks for checkpoint_dir; checkpoint_every still does.
    fit(Regression(), regression_data(8), steps=1, keep_checkpoints=5, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_dir"):
        fit(Regression(), regression_data(8), steps=1, checkpoint_every=5, progress=False)
