"""The weight noise of `vitorch.optim.IVON`: seeded streams, checkpointed and shared across ranks.

Every draw ``θ = m + σ ε`` takes ``ε ~ N(0, I)`` from a generator of the optimizer's own,
one per device, all seeded from one integer.  The generators' states are part of the
optimizer's ``state_dict``, so a run resumed from a checkpoint draws the same ``ε`` as
the uninterrupted one.

Data parallel (``DistributedDataParallel``): every process must draw the *same* ``ε``.
DDP's averaged gradient is then the gradient of the whole batch at one draw ``θ``, the
Hessian estimate ``ĥ = ĝ ε / σ`` pairs that gradient with its own noise, and N processes
take exactly the step one process takes on the union of their batches; the Hessian
estimate and the noise stay equal on every rank without any communication of their own.
Independent draws per rank would pair the averaged gradient with each rank's own ``ε`` (a
wrong ``ĥ`` that differs between ranks) unless the products ``ĝ_r ε_r`` were all-reduced
as well, and would then give another estimator (N draws, each on 1/N of the batch) than
the one-process run.  `NoiseStreams.broadcast` gives every rank rank 0's seed and states.

References:
    Shen et al., *Variational Learning is Effective for Large Deep Networks* (ICML 2024),
    Algorithm 1: one draw ``ε`` per step feeds both the gradient and the Hessian estimate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["NoiseStreams"]


class NoiseStreams:
    """One ``torch.Generator`` per device, all seeded from ``seed``, made on first use.

    Args:
        seed: the streams' seed; ``None`` draws one from torch's global generator now.
    """

    def __init__(self, seed: int | None):
        self.seed = int(torch.randint(2**62, ()).item()) if seed is None else seed
        self.generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The stream of ``device`` (created from the seed on first use)."""
        key = str(device)
        if key not in self.generators:
            self.generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[key]

    def state(self) -> dict:
        """``{"seed", "generators"}``: the seed and each device's generator state (a byte tensor)."""
        return {"seed": self.seed, "generators": {k: g.get_state() for k, g in self.generators.items()}}

    def load(self, noise: dict, devices: Iterable[torch.device]) -> None:
        """Take a saved `state`; ``devices`` are those of the optimizer's trainable parameters.

        A generator saved for another device of the same type (``cuda:0`` read on
        ``cuda:1``) goes to the one device of that type in ``devices``, if there is one.
        """
        self.seed = int(noise["seed"])
        self.generators = {}
        saved = {torch.device(k): v for k, v in noise["generators"].items()}
        ours = set(devices)
        for device, value in saved.items():
            if device not in ours:
                same_type = [d for d in ours if d.type == device.type]
                if len(same_type) == 1 and sum(d.type == device.type for d in saved) == 1:
                    device = same_type[0]
            self.generator(device).set_state(value)

    def broadcast(self, devices: Iterable[torch.device], src: int = 0, group=None) -> None:
        """Load rank ``src``'s `state` on every process of ``group``; nothing outside a process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        noise = [self.state()]
        dist.broadcast_object_list(noise, src=src, group=group)
        self.load(noise[0], devices)
