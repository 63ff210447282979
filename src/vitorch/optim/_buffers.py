"""Scratch storage for `vitorch.optim.IVON`: one flat tensor per role and parameter group.

A draw needs, for every trainable parameter, a copy of the mean (restored on exit) and
the noise ``θ - m``.  Keeping each role in one flat tensor per group, with a view per
parameter, draws all of a group's noise in one ``normal_`` call and reuses the memory
from step to step instead of allocating it anew for every draw.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GroupBuffers", "check_group"]


def check_group(params: list[Tensor], index: int) -> None:
    """Refuse a group whose trainable parameters differ in device or dtype, or are not floating point.

    Raises:
        ValueError: naming the group and what differs.
    """
    params = [p for p in params if p.requires_grad]
    devices = sorted({str(p.device) for p in params})
    dtypes = sorted({str(p.dtype) for p in params})
    if len(devices) > 1 or len(dtypes) > 1:
        raise ValueError(
            f"IVON: parameter group {index} mixes devices {devices} or dtypes {dtypes}; put the parameters "
            "of each device and dtype in a group of their own"
        )
    if any(not p.dtype.is_floating_point for p in params):
        raise ValueError(f"IVON: parameter group {index} holds non-floating parameters ({dtypes[0]})")


class GroupBuffers:
    """The mean copy and noise buffers of one parameter group (not part of the optimizer state).

    Args:
        params: the group's trainable parameters, all on one device with one dtype.
        index: the group's position, for error messages.

    Raises:
        ValueError: if the parameters differ in device or dtype (see `check_group`).
    """

    def __init__(self, params: list[Tensor], index: int):
        check_group(params, index)
        self.params = params
        self._ids = [id(p) for p in params]
        self._sizes = [p.numel() for p in params]
        total = sum(self._sizes)
        options = dict(device=params[0].device, dtype=params[0].dtype)
        self.mean = self.views(torch.empty(total, **options))
        self.noise_flat = torch.empty(total, **options)
        self.noise = self.views(self.noise_flat)
        self._spare: tuple[list[Tensor], Tensor] | None = None
        self.sigma: list[Tensor] | None = None  # σ of this step's draws, set by its first training draw

    def holds(self, params: list[Tensor]) -> bool:
        """Whether these buffers were made for exactly these parameters."""
        return [id(p) for p in params] == self._ids

    def views(self, flat: Tensor) -> list[Tensor]:
        """One view of ``flat`` per parameter, in its shape."""
        return [t.view(p.shape) for t, p in zip(flat.split(self._sizes), self.params)]

    def spare(self) -> tuple[list[Tensor], Tensor]:
        """A second noise buffer (views, flat), for the second and later draws of a step."""
        if self._spare is None:
            flat = torch.empty_like(self.noise_flat)
            self._spare = (self.views(flat), flat)
        return self._spare
