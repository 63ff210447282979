"""CVI steps under DDP: 2 gloo processes with B rows each take the step 1 process takes on the 2B rows.

The batch statistics (``A diag(lam) A^T``, ``A eta``, ``|b|``) go through the SVGP step's one
``all_reduce``; this runs a Bernoulli likelihood, whose sites depend on q, for three steps.
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
from vitorch.models.gp import cvi

# spawning two processes takes ~10-30 s on a loaded machine: a slow test
pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
    pytest.mark.slow,
]

N, B, M = 40, 6, 5


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 2, generator=g, dtype=torch.float64) * 3
    y = (torch.sin(2 * x).sum(-1) + 0.3 * torch.randn(N, generator=g, dtype=torch.float64) > 0).double()
    return x, y


def model() -> gp.SVGP:
    x, _ = data()
    return gp.SVGP(gp.RBF(0.8), x[:M], gp.BernoulliLogit(), num_data=N)


def run(svgp: gp.SVGP, batches) -> list[torch.Tensor]:
    for x, y in batches:
        cvi.cvi_step(svgp, x, y, lr=0.7)
    return [p.detach().clone() for p in svgp.variational_parameters()]


def union_batches():
    x, y = data()
    return [(x[i : i + 2 * B], y[i : i + 2 * B]) for i in (0, 2 * B, 4 * B)]


def worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shards = [(x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]) for x, y in union_batches()]
        torch.save(run(model(), shards), Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_take_the_one_process_step_on_the_union(tmp_path):
    args = (2, free_port(), str(tmp_path))
    context = mp.start_processes(worker, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 300  # a stuck collective fails the test instead of stalling CI
    while not context.join(timeout=max(deadline - time.monotonic(), 0)):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the CVI DDP workers did not finish within 300 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    want = run(model(), union_batches())
    # only the order of float64 sums differs (~1e-16 relative), carried through three steps of 5x5
    # Cholesky solves: far below 1e-9; a rank stepping on its own half alone is off by O(0.1)
    for rank in ranks:
        for got, ref in zip(rank, want):
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    for a, b in zip(*ranks):
        assert torch.equal(a, b)
    alone = run(model(), [(x[:B], y[:B]) for x, y in union_batches()])
    assert max(float((a - b).abs().max()) for a, b in zip(alone, want)) > 1e-3  # the test has power
