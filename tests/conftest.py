"""Shared test set-up: float64, one thread per worker, seeds derived from the test id.

The statistical budget (../shared/TESTING.md): at most 1e-4 false failures per CI
run over all stochastic assertions; with a few hundred assertions each one uses
``Z = 5.2`` standard errors (two-sided p ~ 2e-7).
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from hypothesis import settings

Z = 5.2  # standard errors per stochastic assertion; see the module docstring

settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=25)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

torch.set_num_threads(1)


def seed_from(node_id: str) -> int:
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:4], "little")


@pytest.fixture(autouse=True)
def _seed_and_dtype(request):
    """Seed torch from the test id and run in float64 unless a test says otherwise."""
    torch.manual_seed(seed_from(request.node.nodeid))
    old = torch.get_default_dtype()
    # torch.compile's first call switches distribution validation off for the whole process
    # (torch's own choice); a test that compiles must not change what later tests validate.
    validate = torch.distributions.Distribution._validate_args
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
    torch.distributions.Distribution.set_default_validate_args(validate)


@pytest.fixture
def generator(request) -> torch.Generator:
    return torch.Generator().manual_seed(seed_from(request.node.nodeid))
