"""Turn what the user passes as data into a `torch.utils.data.DataLoader`.

Tensors and tuples of tensors are indexed a whole batch at a time (one gather per
tensor instead of collating rows), and every loader fit builds orders its data with a
`torch.utils.data.DistributedSampler` (``num_replicas=1`` when not
distributed): its order depends only on ``(seed, epoch)``, so a resumed run and a
run on N processes see exactly the batches an uninterrupted single process sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

__all__ = [
    "make_loader",
    "make_eval_loader",
    "no_data",
    "is_no_data",
    "epoch_sampler",
    "loader_generators",
    "to_device",
]


class _TensorRows(Dataset):
    """Rows of equally long tensors; ``ds[list_of_indices]`` returns a whole batch."""

    def __init__(self, tensors: tuple[Tensor, ...], single: bool):
        self.tensors = tensors
        self.single = single

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, idx):
        rows = tuple(t[idx] for t in self.tensors)
        return rows[0] if self.single else rows


class _Strided(Sampler[int]):
    """Indices ``rank, rank + world, ...``: each datum on exactly one rank, none repeated."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _identity(batch):
    return batch


class _Steps(Dataset):
    """``steps`` empty batches (``None``): the data of a model with only global latents."""

    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, idx):
        return None


def no_data(steps: int) -> DataLoader:
    """A loader of ``steps`` batches that are all ``None``, for ``fit(model, None, steps=...)``.

    One epoch is the whole run, so no per-epoch work repeats every step.
    """
    return DataLoader(_Steps(steps), batch_size=None)


def is_no_data(loader: DataLoader) -> bool:
    """Whether ``loader`` is `no_data`'s (its length is the step count, not a data set's)."""
    return isinstance(loader.dataset, _Steps)


def _as_tensors(data, name: str) -> tuple[tuple[Tensor, ...], bool] | None:
    if isinstance(data, Tensor):
        tensors, single = (data,), True
    elif isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        tensors, single = tuple(data), False
    else:
        return None
    if any(t.dim() == 0 for t in tensors):
        raise ValueError(f"{name}: tensors need a leading data dimension; got a 0-d tensor")
    lengths = [t.shape[0] for t in tensors]
    if len(set(lengths)) != 1:
        raise ValueError(f"{name}: tensors must have the same first dimension; got lengths {lengths}")
    if lengths[0] == 0:
        raise ValueError(f"{name} is empty")
    return tensors, single


def make_loader(
    data, *, batch_size: int, shuffle: bool, drop_last: bool, num_workers: int, seed: int, rank: int, world: int
) -> DataLoader:
    """The training loader for ``data`` (a DataLoader, a Dataset, a tensor or a tuple of tensors).

    A user's DataLoader is used as it is in a single process; under DDP it is rebuilt
    around a `DistributedSampler` with the same dataset, batch size, collate
    function and workers.  ``batch_size`` is per process.
    """
    if isinstance(data, DataLoader):
        # Each rank runs every data-free step with its own particles.
        no_data = isinstance(data.dataset, _Steps)
        return data if world == 1 or no_data else _distributed_copy(data, seed=seed, rank=rank, world=world)
    tensors = _as_tensors(data, "data")
    if tensors is not None:
        ds = _TensorRows(*tensors)
        order = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        batches = BatchSampler(order, batch_size, drop_last)
        return DataLoader(ds, sampler=batches, batch_size=None, collate_fn=_identity, num_workers=num_workers)
    if isinstance(data, IterableDataset):
        if world > 1:
            raise ValueError("data: an IterableDataset cannot be sharded by fit under DDP; shard it yourself per rank")
        return DataLoader(data, batch_size=batch_size, drop_last=drop_last, num_workers=num_workers)
    if isinstance(data, Dataset):
        order = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        return DataLoader(data, batch_size=batch_size, sampler=order, drop_last=drop_last, num_workers=num_workers)
    raise ValueError(f"data must be a DataLoader, a Dataset, a tensor or a tuple of tensors; got {type(data).__name__}")


def _distributed_copy(loader: DataLoader, *, seed: int, rank: int, world: int) -> DataLoader:
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError("data: a DataLoader over an IterableDataset cannot be sharded by fit under DDP")
    # Batches come either from (sampler, batch_size) or from a BatchSampler passed as the sampler.
    inner = loader.sampler.sampler if isinstance(loader.sampler, BatchSampler) else loader.sampler
    batch_sampler = loader.sampler if isinstance(loader.sampler, BatchSampler) else loader.batch_sampler
    if not isinstance(inner, (RandomSampler, SequentialSampler)) or type(batch_sampler) is not BatchSampler:
        raise ValueError(
            "data: under DDP fit rebuilds the DataLoader around a DistributedSampler, which needs a plain "
            f"sequential or shuffled loader; this one uses {type(inner).__name__} / {type(batch_sampler).__name__}. "
            "Pass the dataset instead, or a loader with a DistributedSampler built per rank."
        )
    order = DistributedSampler(
        loader.dataset, num_replicas=world, rank=rank, shuffle=isinstance(inner, RandomSampler), seed=seed
    )
    common = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
    )
    if isinstance(loader.sampler, BatchSampler):
        batches = BatchSampler(order, batch_sampler.batch_size, batch_sampler.drop_last)
        return DataLoader(loader.dataset, sampler=batches, batch_size=None, **common)
    return DataLoader(
        loader.dataset, batch_size=batch_sampler.batch_size, sampler=order, drop_last=batch_sampler.drop_last, **common
    )


def make_eval_loader(data, *, batch_size: int, rank: int, world: int) -> DataLoader:
    """A loader over held-out data in a fixed order; under DDP each rank gets a disjoint shard."""
    if isinstance(data, DataLoader):
        if world == 1:
            return data
        inner = data.sampler.sampler if isinstance(data.sampler, BatchSampler) else data.sampler
        if isinstance(data.dataset, IterableDataset) or not isinstance(inner, (RandomSampler, SequentialSampler)):
            raise ValueError("eval_data: under DDP pass a Dataset or tensors (fit shards them), not a custom loader")
        return DataLoader(
            data.dataset,
            batch_size=data.batch_size or batch_size,
            sampler=_Strided(len(data.dataset), rank, world),
            collate_fn=data.collate_fn,
            num_workers=data.num_workers,
        )
    tensors = _as_tensors(data, "eval_data")
    if tensors is not None:
        ds = _TensorRows(*tensors)
        batches = BatchSampler(_Strided(len(ds), rank, world), batch_size, False)
        return DataLoader(ds, sampler=batches, batch_size=None, collate_fn=_identity)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return DataLoader(data, batch_size=batch_size, sampler=_Strided(len(data), rank, world))
    raise ValueError(f"eval_data must be a DataLoader, a Dataset, a tensor or a tuple of tensors; got {type(data)}")


def epoch_sampler(loader: DataLoader):
    """The sampler whose ``set_epoch`` fixes the epoch's order, if there is one."""
    for s in (loader.sampler, getattr(loader.sampler, "sampler", None), getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(s, "set_epoch"):
            return s
    return None


def loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The distinct torch generators that decide the loader's order and worker seeds."""
    candidates = [
        loader.generator,
        getattr(loader.sampler, "generator", None),
        getattr(getattr(loader.sampler, "sampler", None), "generator", None),
        getattr(getattr(loader.batch_sampler, "sampler", None), "generator", None),
    ]
    found: list[torch.Generator] = []
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def to_device(batch, device: torch.device):
    """Move the tensors of a (nested) batch to ``device``; anything else passes through."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
