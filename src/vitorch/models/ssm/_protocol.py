"""What a batch is for the state-space zoo's trainable modules.

One datum is one observed sequence.  A batch is ``y [B, T, obs_dim]``: ``B``
sequences of ``T`` steps (a single series is ``y[None]``, ``B = 1``).
`vitorch.fit` hands the modules tensor batches, or tuples whose first entry
is ``y``; both are accepted.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["as_sequences", "one_series"]


def as_sequences(name: str, y) -> Tensor:
    """``y [B, T, p]`` from a batch (a tensor, or a tuple/list whose first entry is the tensor).

    Raises:
        TypeError: if the batch holds no tensor.
        ValueError: if ``y`` has fewer than three dimensions.
    """
    if isinstance(y, (tuple, list)) and y:
        y = y[0]
    if not isinstance(y, Tensor):
        raise TypeError(
            f"{name}: a batch must be a tensor y [B, T, obs_dim] (or a tuple starting with it); got {type(y).__name__}"
        )
    if y.dim() < 3:
        raise ValueError(
            f"{name}: y must be [B, T, obs_dim], a batch of sequences (one series: y[None]); got shape {tuple(y.shape)}"
        )
    return y


def one_series(name: str, y: Tensor, num_steps: int) -> tuple[int, ...]:
    """Check that ``y [*B, T, p]`` is one series of ``num_steps`` steps; return its batch shape ``B``.

    Guides with free parameters for one series (not amortized) pair with exactly one sequence.

    Raises:
        ValueError: if ``y`` has another length or holds more than one sequence.
    """
    if y.dim() < 2 or y.shape[-2] != num_steps:
        raise ValueError(
            f"{name}: y must be [*B, {num_steps}, obs_dim] (this guide's T = {num_steps}); got shape {tuple(y.shape)}"
        )
    batch = tuple(y.shape[:-2])
    if any(b != 1 for b in batch):
        raise ValueError(
            f"{name}: this guide has free parameters for one series, but y holds {tuple(batch)} sequences; "
            "use an amortized guide (StructuredInferenceNetwork) for several"
        )
    return batch
