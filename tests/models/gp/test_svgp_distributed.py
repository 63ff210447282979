"""SVGP natural-gradient steps under DDP: 2 gloo processes with B rows each against 1 process with 2B.

Before, each rank stepped q on its own batch (scaled by N / B) and the ranks' q drifted
apart; the step now sums the batch statistics over the process group.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitorch.models import gp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

N, B, M = 40, 6, 5  # data set size (the model's num_data), rows per rank per step, inducing points


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 2, generator=g, dtype=torch.float64) * 3
    y = torch.sin(2 * x).sum(-1) + 0.1 * torch.randn(N, generator=g, dtype=torch.float64)
    return x, y


def model(whiten: bool) -> gp.SVGP:
    x, _ = data()
    return gp.SVGP(gp.RBF(0.8), x[:M], gp.GaussianLikelihood(noise=0.1), num_data=N, whiten=whiten)


def steps(svgp: gp.SVGP, batches) -> list[torch.Tensor]:
    for x, y in batches:
        svgp.natural_gradient_step(x, y, lr=0.5)
    return [p.detach().clone() for p in (svgp.q_loc, svgp.q_diag, svgp.q_offdiag)]


def union_batches():
    """Step t uses rows [2tB, 2(t+1)B): rank r's batch is its half, rows [(2t + r)B, (2t + r + 1)B)."""
    x, y = data()
    return [(x[i : i + 2 * B], y[i : i + 2 * B]) for i in (0, 2 * B, 4 * B)]


def worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # as the parent's conftest does
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {}
        for whiten in (True, False):
            shards = [(x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]) for x, y in union_batches()]
            result[whiten] = steps(model(whiten), shards)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("svgp_ddp")
    context = mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 300  # a stuck collective fails the test instead of stalling CI
    while not context.join(timeout=max(deadline - time.monotonic(), 0)):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the SVGP DDP workers did not finish within 300 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("whiten", [True, False])
def test_two_ranks_take_the_one_process_step_on_the_union(ranks, whiten):
    want = steps(model(whiten), union_batches())
    # The only difference is the order of float64 sums (two halves of 2B rows added, against one
    # sum of 2B): ~1e-16 relative in A A^T, carried through three Cholesky solves of a 5x5 system
    # (condition number of Lambda well below 1e4 here) and three steps: far below 1e-9. A rank
    # stepping on its own batch alone is off by O(1).
    for rank in ranks:
        for got, ref in zip(rank[whiten], want):
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    for a, b in zip(ranks[0][whiten], ranks[1][whiten]):
        assert torch.equal(a, b)  # the ranks' q stay identical
