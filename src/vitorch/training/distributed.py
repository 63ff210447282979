"""Data parallelism for `vitorch.training.fit`, on top of ``torch.distributed``.

Nothing here reimplements communication: the model is wrapped in
`torch.nn.parallel.DistributedDataParallel` (which averages gradients across
ranks during ``backward``), the data is split by a
`torch.utils.data.DistributedSampler`, and the few decisions every rank must
take together (stop, skip a non-finite step, the held-out metrics) are agreed with one
small ``all_reduce``.  Only rank 0 writes checkpoints, logs and progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Topology", "setup", "wrap", "all_reduce", "logsumexp_over_ranks", "gather_objects", "broadcast_int"]


@dataclass(frozen=True)
class Topology:
    """Where this process sits: ``rank`` of ``world`` processes; ``active`` if a process group is used."""

    rank: int = 0
    world: int = 1
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(distributed: bool | str) -> Topology:
    """Decide whether this run is data-parallel.

    Args:
        distributed: ``"auto"`` uses a process group that is already initialized (for
            example by the user's script under ``torchrun``); ``True`` also initializes one
            from the ``torchrun`` environment variables (``RANK``, ``WORLD_SIZE``,
            ``MASTER_ADDR``, ``MASTER_PORT``) with the NCCL backend on CUDA and gloo
            otherwise; ``False`` never goes distributed.
    """
    if distributed not in (True, False, "auto"):
        raise ValueError(f"distributed must be True, False or 'auto'; got {distributed!r}")
    if distributed is False or not dist.is_available():
        if distributed is True:
            raise ValueError("distributed=True but this torch build has no torch.distributed")
        return Topology()
    if not dist.is_initialized():
        if distributed == "auto":
            return Topology()
        needed = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if needed:
            raise ValueError(
                f"distributed=True but no process group is initialized and {needed} are not set; "
                "launch with torchrun --nproc_per_node=N or call torch.distributed.init_process_group first"
            )
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    world = dist.get_world_size()
    return Topology(rank=dist.get_rank(), world=world, active=world > 1)


def wrap(model: nn.Module, topo: Topology, device: torch.device) -> nn.Module:
    """``model`` itself in one process, else ``DistributedDataParallel(model)``."""
    if not topo.active:
        return model
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters to train in parallel")
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce(values: Tensor, topo: Topology, op: str = "sum") -> Tensor:
    """Sum (or max) ``values`` over ranks; the identity in one process."""
    if topo.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return values


def logsumexp_over_ranks(values: Tensor) -> Tensor:
    """``log sum_ranks exp(values)`` elementwise, on every rank: the log-sum-exp of log-weights whose
    particles are split across the processes (each rank passes the log-sum-exp of its own share).

    The largest value is agreed first (one ``all_reduce`` with MAX), so the sum of
    ``exp(values - max)`` (a second ``all_reduce``) cannot overflow; an entry that is ``-inf`` on
    every rank stays ``-inf``.  Outside an initialized process group of more than one process it
    returns ``values`` unchanged.

    Args:
        values: ``[*shape]`` this rank's log-sum-exp, the same shape on every rank.

    Returns:
        ``[*shape]`` the log-sum-exp over all ranks' particles.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    top = values.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    finite_top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(values - finite_top)
    dist.all_reduce(total)
    return torch.where(top == -torch.inf, top, finite_top + torch.log(total))


def gather_objects(obj, topo: Topology) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (used for per-rank RNG states)."""
    if not topo.active:
        return [obj]
    out = [None] * topo.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_int(value: int, topo: Topology, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (the data-order seed must agree)."""
    if not topo.active:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())
