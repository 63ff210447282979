"""Held-out evaluation for `vitorch.training.fit`, and what makes one unusable.

An evaluation with a NaN or infinite metric, or with held-out data whose bound sits at
the ``-1e30`` floor (every particle impossible: the mean bound is then a finite number
near ``-1e28`` that means ``-inf``), cannot rank checkpoints: ``value > nan`` is never
true, so without this check the first evaluation would stay "best" for ever, early
stopping would end the run and ``restore_best`` roll it back without a word.  Such an
evaluation goes through ``on_nonfinite``, like a non-finite loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .._logspace import LOG_WEIGHT_LIMIT, finite_bound
from .distributed import Topology, all_reduce
from .guard import split_output

__all__ = ["evaluate", "unusable_evaluation"]


def _batch_len(batch) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = _batch_len(item)
            if n:
                return n
    return 0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    topo: Topology,
    device: torch.device,
    eval_fn: Callable | None = None,
    move: Callable | None = None,
) -> tuple[dict[str, float], int, int]:
    """Held-out metrics; by default the mean bound per datum (or the mean loss per datum).

    Under DDP each rank sees a disjoint shard and the default metrics are exact sums
    over all ranks; a custom ``eval_fn(model, loader) -> {name: float}`` is averaged
    over ranks.

    Returns:
        ``(metrics, impossible, count)``: the metrics, the number of held-out data whose
        bound is not an honest number (at the clamp or infinite; 0 for a custom
        ``eval_fn`` or a scalar-loss model) and the number of held-out data.
    """
    was_training = model.training
    model.eval()
    try:
        if eval_fn is not None:
            metrics = {k: float(v) for k, v in dict(eval_fn(model, loader)).items()}
            if topo.active:
                names = sorted(metrics)
                vals = torch.tensor([metrics[k] for k in names], dtype=torch.float64, device=device)
                vals = all_reduce(vals, topo) / topo.world
                metrics = dict(zip(names, vals.tolist()))
            return metrics, 0, 0
        total = torch.zeros(3, dtype=torch.float64, device=device)  # (sum, count, impossible)
        kind = None
        for batch in loader:
            batch = move(batch) if move is not None else batch
            loss, bound = split_output(model(batch))
            if bound is not None:
                kind = "bound"
                b = bound.detach()
                impossible = (~finite_bound(b) & ~torch.isnan(b)).sum()
                total += torch.stack([b.sum().to(torch.float64), total.new_tensor(b.numel()), impossible.to(total)])
            else:
                kind = "loss"
                n = max(_batch_len(batch), 1)  # weight each batch's mean loss by its size
                total += torch.stack([loss.detach().to(torch.float64) * n, total.new_tensor(n), total.new_zeros(())])
        total = all_reduce(total, topo)
        s, n, impossible = total.tolist()
        if kind is None or n == 0:
            raise ValueError("eval_data yielded no batches")
        return {kind: s / n}, int(impossible), int(n)
    finally:
        model.train(was_training)


def unusable_evaluation(metrics: dict[str, float], impossible: int, count: int, step: int, epoch: int) -> str | None:
    """Why this evaluation cannot rank the run (the error text), or ``None`` if it can."""
    reasons = [f"{name} = {value}" for name, value in metrics.items() if not math.isfinite(value)]
    if impossible:
        reasons.append(
            f"{impossible} of {count} held-out data have no finite bound (every particle impossible, so the "
            f"bound sits at the clamp's floor, -{LOG_WEIGHT_LIMIT:g} or the lowest value of a half dtype, or a "
            "+inf log-joint)"
        )
    if not reasons:
        return None
    return f"non-finite evaluation at step {step} (epoch {epoch}): " + "; ".join(reasons)
