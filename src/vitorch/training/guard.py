"""The non-finite guard and the held-out evaluation of :func:`~vitorch.training.fit`.

A NaN or infinite loss or gradient never reaches the optimizer: the step either
stops the run with :class:`NonFiniteError` naming the step and the parameters whose
gradients are not finite, or is skipped and counted.  The cheap path is one fused
2-norm over all gradients (non-finite whenever an entry is; a max-norm would be exact
but costs ~15x more on CPU); the per-parameter search runs only after an alarm, and a
finite gradient whose squared norm merely overflowed passes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import get_total_norm

from .distributed import Topology, all_reduce

__all__ = [
    "NonFiniteError",
    "nonfinite_flags",
    "nonfinite_parameters",
    "describe_nonfinite",
    "split_output",
    "evaluate",
]


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite during :func:`~vitorch.training.fit`.

    References:
        Micikevicius et al., *Mixed Precision Training* (ICLR 2018): skipping steps with non-finite gradients.
    """


def split_output(out) -> tuple[Tensor, Tensor | None]:
    """``(scalar loss, [*batch] bound or None)`` from a :class:`vitorch.LossOutput` or a scalar loss."""
    if isinstance(out, Tensor):
        loss, bound = out, None
    elif isinstance(getattr(out, "loss", None), Tensor):
        loss, bound = out.loss, getattr(out, "bound", None)
    else:
        raise ValueError(
            f"model(batch) must return a vitorch.LossOutput (from vt.loss) or a scalar tensor; got {type(out).__name__}"
        )
    if loss.numel() != 1:
        raise ValueError(f"model(batch) returned a loss of shape {tuple(loss.shape)}; fit needs a scalar")
    return loss.reshape(()), bound


def nonfinite_flags(loss: Tensor, params: list[Tensor]) -> Tensor:
    """``[3]`` float64: (loss not finite, gradient norm not finite, gradient 2-norm), no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = get_total_norm(grads, norm_type=2.0) if grads else torch.zeros((), device=loss.device)
    return torch.stack([~torch.isfinite(loss.detach()), ~torch.isfinite(norm), norm.to(loss.device)]).to(torch.float64)


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """``"name (n NaN and m inf of k entries)"`` for every parameter with a non-finite gradient."""
    bad = []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach()
        n_nan, n_inf = int(torch.isnan(g).sum()), int(torch.isinf(g).sum())
        if n_nan or n_inf:
            bad.append(f"{name} ({n_nan} NaN and {n_inf} inf of {g.numel()} entries)")
    return bad


def describe_nonfinite(bad: list[str], loss: float, step: int, epoch: int, batch: int) -> str:
    """The error text: where it happened, the loss, and every parameter with a bad gradient."""
    where = f"step {step} (epoch {epoch}, batch {batch})"
    if not math.isfinite(loss):
        head = f"non-finite loss {loss} at {where}"
    else:
        head = f"non-finite gradient at {where} (loss {loss:.6g})"
    if bad:
        return head + "; non-finite gradients in: " + ", ".join(bad)
    if math.isfinite(loss):
        return head + " (on another rank)"
    return head


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
) -> dict[str, float]:
    """Held-out metrics; by default the mean bound per datum (or the mean loss per datum).

    Under DDP each rank sees a disjoint shard and the default metrics are exact sums
    over all ranks; a custom ``eval_fn(model, loader) -> {name: float}`` is averaged
    over ranks.
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
            return metrics
        total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum, count)
        kind = None
        for batch in loader:
            batch = move(batch) if move is not None else batch
            loss, bound = split_output(model(batch))
            if bound is not None:
                kind = "bound"
                total += torch.stack([bound.detach().sum().to(torch.float64), total.new_tensor(bound.numel())])
            else:
                kind = "loss"
                n = max(_batch_len(batch), 1)  # weight each batch's mean loss by its size
                total += torch.stack([loss.detach().to(torch.float64) * n, total.new_tensor(n)])
        total = all_reduce(total, topo)
        s, n = total.tolist()
        if kind is None or n == 0:
            raise ValueError("eval_data yielded no batches")
        return {kind: s / n}
    finally:
        model.train(was_training)
