"""Shared benchmark harness: timing by medians in one process, and the JSON line format.

Every comparison prints one line
``{"bench", "case", "vitorch_s", "peer", "peer_s", "ratio"}`` with
``ratio = peer_s / vitorch_s`` from medians of repeated runs, so ``ratio > 1``
means vitorch is faster.  A peer that will not import is reported with
``"peer_s": null, "ratio": null, "skipped": "<reason>"`` rather than faked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for comparability)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (median is reported)")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by the calling thread's CPU time instead of the wall clock (needs --threads 1); "
        "robust to other jobs on a shared machine, which only ever delay a thread",
    )
    return p


def setup(args: argparse.Namespace) -> None:
    global _clock
    if getattr(args, "cpu_time", False):
        if args.threads != 1:
            raise SystemExit("--cpu-time counts the calling thread only: use it with --threads 1")
        _clock = time.thread_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)


# What the timings read: the wall clock, or with --cpu-time the thread's CPU time.
_clock = time.perf_counter


def clock_name() -> str:
    """``"wall"`` or ``"thread CPU time"``, for the JSON lines."""
    return "thread CPU time" if _clock is time.thread_time else "wall"


def _synchronizer() -> Callable[[], None]:
    """Wait for queued GPU work before reading the clock; on the CPU, nothing to do (and
    nothing timed: asking ``torch.cuda.is_available()`` inside the loop costs microseconds)."""
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median time of ``fn()`` (wall, or CPU with ``--cpu-time``) over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync = _synchronizer()
    times = []
    for _ in range(repeats):
        t0 = _clock()
        fn()
        sync()
        times.append(_clock() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median times of several functions timed in alternation, so drift in machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync = _synchronizer()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = _clock()
            fn()
            sync()
            times[k].append(_clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report(bench: str, case: str, vitorch_s: float, peer: str, peer_s: float | None, **extra) -> dict:
    """Print and return one comparison line; ``peer_s=None`` with ``skipped=...`` for a missing peer."""
    line = {
        "bench": bench,
        "case": case,
        "vitorch_s": vitorch_s,
        "peer": peer,
        "peer_s": peer_s,
        "ratio": (peer_s / vitorch_s) if (peer_s is not None and vitorch_s > 0) else None,
    }
    line.update(extra)
    print(json.dumps(line), flush=True)
    return line


def try_import(name: str):
    """Import an optional peer, returning ``(module, None)`` or ``(None, reason)``."""
    try:
        return __import__(name), None
    except Exception as err:  # any import failure means the peer is skipped, with its reason
        return None, f"{type(err).__name__}: {err}"
