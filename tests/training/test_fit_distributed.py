"""DDP: two gloo processes on 127.0.0.1 against one process on the union of their batches."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ddp_launch import run_two_ranks
from fit_ddp_worker import PER_RANK, N, fit_options, init_model, worker
from fit_models import RegressionBound, regression_data

from vitorch.training import fit

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    run_two_ranks(worker, out, ["torch._dynamo", "vitorch.training", "fit_ddp_worker"])
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


# Float64 sums of 8 rows taken in two halves and then averaged, against one sum of 8:
# the results differ only by rounding, a few ulps of the gradient (~1e-15 relative).
# After six Adam steps (update ~ lr * g / sqrt(v), well conditioned here) that stays
# below 1e-12; a real discrepancy (a wrong shard, a missing average) is O(lr) = 5e-2.
TOL = dict(rtol=1e-10, atol=1e-12)


def test_averaged_gradient_equals_the_union_batch_gradient(two_ranks):
    _, ranks = two_ranks
    (x, y), _ = fit_options()
    model = init_model()
    model((x, y)).backward()  # one process, all 16 rows: the mean over the union
    for rank in ranks:
        for got, want in zip(rank["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, want, **TOL)


def test_two_process_fit_equals_one_process_fit_on_the_union(two_ranks):
    out, ranks = two_ranks
    data, options = fit_options()
    model = init_model()
    # One process with twice the per-rank batch sees, at every step, exactly the union of
    # the two ranks' batches: DistributedSampler splits the same seeded permutation.
    hist = fit(model, data, **dict(options, batch_size=2 * PER_RANK))
    for rank in ranks:
        for got, want in zip(rank["fit"], model.parameters()):
            torch.testing.assert_close(got, want.detach(), **TOL)
        # held-out metrics are exact sums over both shards, so they match too
        for a, b in zip(rank["evals"], hist.evals):
            assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-10)
        # and so do the logged training losses: the global loss, not each rank's shard's
        assert rank["fit_losses"] == pytest.approx([r["loss"] for r in hist.steps], rel=1e-10)
    assert N % (2 * PER_RANK) == 0  # no padding by DistributedSampler in this comparison
    # only rank 0 wrote, and it wrote once per checkpoint step (3 and 6)
    assert sorted(p.name for p in (out / "ck").iterdir()) == ["step-000000003.pt", "step-000000006.pt"]
    assert (out / "log" / "steps.csv").read_text().count("\n") == 7


def test_resume_under_ddp_is_bit_identical(two_ranks):
    _, ranks = two_ranks
    for rank in ranks:
        for a, b in zip(rank["resumed"], rank["fit"]):
            assert torch.equal(a, b)


def test_ranks_stay_in_sync_and_draw_their_own_particles(two_ranks):
    _, (r0, r1) = two_ranks
    for a, b in zip(r0["vae"], r1["vae"]):
        assert torch.equal(a, b)
    # 16 rows shared by 2 ranks in batches of 4: 2 steps per epoch on each rank
    assert len(r0["vae_local"]) == len(r1["vae_local"]) == 4
    # same seed on both ranks, different data shards and particles: the ranks' own losses differ
    assert all(a[0] != b[0] for a, b in zip(r0["vae_local"], r1["vae_local"]))
    # what both log is the global loss and bound: the mean over the two equal-sized batches
    for logged in (r0["vae_logged"], r1["vae_logged"]):
        for (loss, bound), a, b in zip(logged, r0["vae_local"], r1["vae_local"]):
            assert loss == pytest.approx((a[0] + b[0]) / 2, rel=1e-12)
            assert bound == pytest.approx((a[1] + b[1]) / 2, rel=1e-12)


def test_rank_zero_logs_the_global_loss_and_bound(two_ranks):
    # Before, rank 0 logged its own shard's loss and bound (half of each step's batch).
    _, ranks = two_ranks
    model = init_model(RegressionBound)
    hist = fit(model, regression_data(N, seed=1), steps=3, batch_size=2 * PER_RANK, seed=7, lr=0.05, progress=False)
    want = [(r["loss"], r["bound"], r["impossible_data"]) for r in hist.steps]
    for rank in ranks:
        for got, ref in zip(rank["bound_logged"], want):
            assert got == pytest.approx(ref, rel=1e-10)
