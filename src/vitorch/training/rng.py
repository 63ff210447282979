"""Random-number-generator states as plain tensors and numbers.

A checkpoint is read with ``torch.load(weights_only=True)``, which refuses arbitrary
Python objects; numpy's and Python's generator states are tuples holding arrays and
big integers, so they are stored here as int64 tensors and floats instead.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import Tensor

__all__ = ["capture_rng", "restore_rng", "generator_states", "restore_generators"]


def capture_rng() -> dict:
    """The global torch, CUDA, numpy and Python generator states, as tensors and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global state is what user code draws from)
    version, py_state, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy_name": str(name),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "python_version": int(version),
        # Mersenne-Twister words are < 2**32, so int64 holds them exactly.
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": math.nan if gauss_next is None else float(gauss_next),
    }


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (state["numpy_name"], keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_cached"])
    )
    gauss = state["python_gauss"]
    random.setstate(
        (
            state["python_version"],
            tuple(int(v) for v in state["python_state"].tolist()),
            None if math.isnan(gauss) else gauss,
        )
    )


def generator_states(generators: list[torch.Generator]) -> list[Tensor]:
    """States of the data pipeline's own generators (a sampler's, a loader's)."""
    return [g.get_state() for g in generators]


def restore_generators(generators: list[torch.Generator], states: list[Tensor]) -> None:
    if len(generators) != len(states):
        raise ValueError(
            f"the checkpoint holds {len(states)} data-order generator state(s) but the data loader "
            f"has {len(generators)}; resume with a loader built the same way"
        )
    for g, s in zip(generators, states):
        g.set_state(s)
