"""Kalman filters on an unstable mode that the emission cannot see.

With ``F = 1.5 I``, ``H = [1, 1]`` the direction ``x_1 - x_2`` is never observed and its
variance grows like ``1.5^(2t)``; ``H P H^T`` then cancels terms that large, so after about
two dozen steps float64 keeps fewer than half the digits of the innovation covariance (the
square-root filter only doubles that horizon).  Both filters must either match the exact
log-likelihood or refuse with a ValueError naming the step; before this was enforced the
sequential filter returned -3e159 at T = 500 and the parallel one raised torch's
``_LinAlgError``.

The reference is exact: ``y`` depends on ``x`` only through ``s = x_1 + x_2``, a scalar AR(1)
with coefficient 1.5 and noise variance ``1^T Q 1``, observed as ``y = s + v``, whose scalar
Kalman filter is well conditioned for bounded ``y``.
"""

from __future__ import annotations

import math

import pytest
import torch

from vitorch.models import ssm

DT = torch.float64


def _model(rate: float, batch: tuple[int, ...] = ()) -> ssm.LinearGaussianSSM:
    F = (rate * torch.eye(2, dtype=DT)).expand(*batch, 2, 2)
    return ssm.LinearGaussianSSM(
        F,
        torch.eye(2, dtype=DT),
        torch.tensor([[1.0, 1.0]], dtype=DT),
        torch.eye(1, dtype=DT),
        torch.zeros(2, dtype=DT),
        torch.eye(2, dtype=DT),
    )


def _observed_mode_log_prob(y: torch.Tensor, rate: float) -> float:
    """Exact ``log p(y)`` from the scalar observed mode ``s = x_1 + x_2`` (Q = P1 = I, R = 1)."""
    mean, var, total = 0.0, 2.0, 0.0
    for t, obs in enumerate(y[:, 0].tolist()):
        if t > 0:
            mean, var = rate * mean, rate**2 * var + 2.0
        if math.isnan(obs):
            continue
        S = var + 1.0
        v = obs - mean
        total += -0.5 * (math.log(2 * math.pi * S) + v * v / S)
        gain = var / S
        mean, var = mean + gain * v, (1 - gain) * var
    return total


@pytest.mark.parametrize("parallel", [False, True])
def test_unstable_unobserved_mode_is_refused(parallel):
    # The case reported: T = 500.  The unobserved variance passes S / sqrt(eps) at step 24 (0-based 23).
    torch.manual_seed(0)
    y = torch.randn(500, 1, dtype=DT)
    with pytest.raises(ValueError, match=r"step 23 \(0-based\) cannot be resolved in torch.float64") as err:
        _model(1.5).log_prob(y, parallel=parallel)
    assert "null space of H" in str(err.value) and "875" in str(err.value)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("T", [20, 23])
def test_unstable_unobserved_mode_below_the_limit_is_exact(T, parallel):
    # Up to the refusal both filters keep the likelihood (errors ~1e-9 nats at T = 23).
    torch.manual_seed(1)
    y = torch.randn(T, 1, dtype=DT)
    got = _model(1.5).log_prob(y, parallel=parallel).item()
    assert got == pytest.approx(_observed_mode_log_prob(y, 1.5), abs=1e-7)


@pytest.mark.parametrize("parallel", [False, True])
def test_stable_counterpart_long_series_is_not_refused(parallel):
    torch.manual_seed(2)
    y = torch.randn(500, 1, dtype=DT)
    got = _model(0.9).log_prob(y, parallel=parallel).item()
    assert got == pytest.approx(_observed_mode_log_prob(y, 0.9), abs=1e-8)


@pytest.mark.parametrize("parallel", [False, True])
def test_missing_steps_do_not_count(parallel):
    # Only observed steps need a resolvable S: data missing after step 15 leave the likelihood exact.
    torch.manual_seed(3)
    y = torch.randn(40, 1, dtype=DT)
    y[16:] = float("nan")
    got = _model(1.5).log_prob(y, parallel=parallel).item()
    assert got == pytest.approx(_observed_mode_log_prob(y, 1.5), abs=1e-7)


@pytest.mark.parametrize("parallel", [False, True])
def test_one_unstable_batch_member_is_refused(parallel):
    F = torch.stack([0.9 * torch.eye(2, dtype=DT), 1.5 * torch.eye(2, dtype=DT)])
    m = ssm.LinearGaussianSSM(
        F,
        torch.eye(2, dtype=DT),
        torch.tensor([[1.0, 1.0]], dtype=DT),
        torch.eye(1, dtype=DT),
        torch.zeros(2, dtype=DT),
        torch.eye(2, dtype=DT),
    )
    torch.manual_seed(4)
    with pytest.raises(ValueError, match="cannot be resolved"):
        m.log_prob(torch.randn(2, 100, 1, dtype=DT), parallel=parallel)
