"""The non-finite guard of `vitorch.training.fit`.

A NaN or infinite loss or gradient never reaches the optimizer: the step either
stops the run with `NonFiniteError` naming the step and the parameters whose
gradients are not finite, or is skipped and counted.  The same holds for *impossible
data*: a datum whose bound is not an honest number (``vitorch._logspace.finite_bound``:
every particle had log-weight ``-inf``, so the bound sits at the ``-1e30`` floor, or a
``+inf`` log-joint at the ceiling) would otherwise be trained on as a finite loss of
about ``1e29``.  After the optimizer step the parameters are checked too, so a divergent
update is reported at the step that made it, not by whatever fails in the next forward.

The cheap path is one fused 2-norm over all gradients (non-finite whenever an entry is;
a max-norm would be exact but costs ~15x more on CPU) and one over all parameters; the
per-parameter search runs only after an alarm, and finite values whose squared norm
merely overflowed pass it (for parameters: unless an entry's own square overflows).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import get_total_norm

from .._logspace import LOG_WEIGHT_LIMIT, finite_bound

__all__ = [
    "NonFiniteError",
    "split_output",
    "step_statistics",
    "nonfinite_parameters",
    "parameter_norm",
    "divergent_parameters",
    "describe_nonfinite",
    "describe_divergence",
    "add_step_note",
]


class NonFiniteError(FloatingPointError):
    """A loss, gradient, bound, evaluation or parameter was NaN or infinite during `vitorch.training.fit`.

    References:
        Micikevicius et al., *Mixed Precision Training* (ICLR 2018): skipping steps with non-finite gradients.
    """


def split_output(out) -> tuple[Tensor, Tensor | None]:
    """``(scalar loss, [*batch] bound or None)`` from a `vitorch.LossOutput` or a scalar loss."""
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


def step_statistics(loss: Tensor, bound: Tensor | None, params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """What one step reports, with no host sync.

    Returns:
        ``summable [6]`` float64: (loss, sum of the bound, number of data, number of
        impossible data, loss not finite, gradient norm not finite), to be summed over
        ranks; and ``grad_norm []`` float64, the gradients' 2-norm (equal on every rank
        once DDP has averaged them).
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = get_total_norm(grads, norm_type=2.0) if grads else torch.zeros((), device=loss.device)
    norm = norm.to(device=loss.device, dtype=torch.float64)
    loss = loss.detach().to(torch.float64)
    if bound is not None:
        b = bound.detach()
        impossible = (~finite_bound(b) & ~torch.isnan(b)).sum()  # a NaN bound shows in the loss
        data = torch.stack([b.to(torch.float64).sum(), loss.new_tensor(b.numel()), impossible.to(loss)])
    else:
        data = loss.new_zeros(3)
    flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(norm)]).to(torch.float64)
    return torch.cat([loss[None], data, flags]), norm


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


def parameter_norm(params: list[Tensor]) -> Tensor:
    """The 2-norm of all parameters (no host sync): not finite if an entry is, or if it overflowed."""
    return get_total_norm(params, norm_type=2.0)  # under no_grad: one fused pass, no autograd record


def divergent_parameters(model: nn.Module) -> list[str]:
    """Every parameter with a NaN/inf entry or an entry whose square overflows its dtype.

    An entry beyond ``sqrt(finfo.max)`` (``1.8e19`` in float32) turns any square, norm or
    quadratic form the model computes with it into inf: the update that made it diverged.
    """
    bad = []
    for name, p in model.named_parameters():
        v = p.detach()
        if not v.is_floating_point() or v.numel() == 0:
            continue
        n_nan, n_inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        largest = float(v.abs().nan_to_num(nan=0.0).max())
        if n_nan or n_inf:
            bad.append(f"{name} ({n_nan} NaN and {n_inf} inf of {v.numel()} entries)")
        elif largest > math.sqrt(torch.finfo(v.dtype).max):
            bad.append(f"{name} (entries up to {largest:.3g}, whose squares overflow {v.dtype})")
    return bad


def _where(step: int, epoch: int, batch: int) -> str:
    return f"step {step} (epoch {epoch}, batch {batch})"


def describe_nonfinite(
    bad: list[str], loss: float, step: int, epoch: int, batch: int, impossible: int = 0, data: int = 0
) -> str:
    """The error text: where it happened, the loss, impossible data, and every parameter with a bad gradient."""
    where = _where(step, epoch, batch)
    if not math.isfinite(loss):
        head = f"non-finite loss {loss} at {where}"
    elif impossible and not bad:
        head = f"impossible data at {where} (loss {loss:.6g})"
    else:
        head = f"non-finite gradient at {where} (loss {loss:.6g})"
    if impossible:
        head += (
            f"; {impossible} of {data} data have no finite bound (every particle impossible, log-weight -inf, "
            f"so the bound sits at the clamp's floor, -{LOG_WEIGHT_LIMIT:g} or the lowest value of a half dtype; "
            "or a +inf log-joint): check the data against the likelihood's support and the guide's support "
            "against the prior's"
        )
    if bad:
        return head + "; non-finite gradients in: " + ", ".join(bad)
    if math.isfinite(loss) and not impossible:
        return head + " (on another rank)"
    return head


def describe_divergence(bad: list[str], step: int, epoch: int, batch: int, lr: float, grad_norm: float) -> str:
    """The error text for an optimizer step that left parameters non-finite or overflowing."""
    return (
        f"the optimizer step at {_where(step, epoch, batch)} diverged (lr {lr:.6g}, gradient norm "
        f"{grad_norm:.6g}): " + ", ".join(bad) + "; the gradients were finite, so the update itself is at fault "
        "(lower the learning rate or clip the gradients). The step cannot be undone, so this stops the run "
        "whatever on_nonfinite says"
    )


def add_step_note(err: BaseException, step: int, epoch: int, batch: int, what: str) -> None:
    """Add ``"raised in vitorch.fit at step ..."`` to ``err``'s notes (Python >= 3.11; else nothing)."""
    if hasattr(err, "add_note"):
        err.add_note(f"(raised in vitorch.fit by {what} at {_where(step, epoch, batch)})")
