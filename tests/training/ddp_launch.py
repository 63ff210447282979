"""Start two gloo workers for the DDP tests and wait for them, failing (not stalling) if they hang."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(worker, out: Path, preload: list[str], timeout: float = 300.0) -> None:
    """Run ``worker(rank, 2, port, str(out))`` on two processes; on failure report their stacks.

    The workers start from a fork server: a fresh single-threaded process (forking the
    multi-threaded pytest process directly can deadlock a child) that imports ``preload``
    (torch, torch._dynamo, vitorch, the worker module) once, so both ranks start at once
    instead of importing twice.  A worker stuck in a collective writes its stacks to
    ``out/stuck<rank>.txt`` (faulthandler), which the failure message includes.
    """
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    if method == "forkserver":
        mp.get_context("forkserver").set_forkserver_preload(preload)
    context = mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, join=False, start_method=method)
    deadline = time.monotonic() + timeout  # a stuck collective fails the test instead of stalling CI
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0)):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.kill()
                raise TimeoutError(f"the DDP workers did not finish within {timeout:.0f} s")
    except Exception as err:
        stacks = "\n".join(f.read_text() for f in sorted(out.glob("stuck*.txt")))
        pytest.fail(f"{type(err).__name__}: {err}\n{stacks}")
