"""IVON and NPE under DDP: two gloo ranks running ``vt.fit`` end where one process does.

IVON: every rank draws rank 0's weight noise (``vt.fit`` calls ``IVON.broadcast_noise``), so
DDP's averaged gradient is the whole batch's gradient at one draw and two ranks with batches of
4 take exactly the steps one process takes with the union batch of 8 -- means, Hessian
estimates and noise streams alike, also with two draws per step and after a resume.

NPE: the maximum-likelihood loss is deterministic given the pairs, so ``train_npe`` on two ranks
(batches of 4) equals ``train_npe`` in one process with batches of 8, held-out evaluations,
early stopping and the restored best weights included.  The atomic (APT) loss draws its atoms
within each rank's batch from that rank's own stream; its reference is the one-process
emulation of the zoo test (each shard stepped with its rank's stream, losses averaged).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ddp_launch import run_two_ranks
from trainers_ddp_worker import (
    ATOMS,
    MLE_EPOCHS,
    MLE_LR,
    NPE_LR,
    NPE_STEPS,
    PER_RANK,
    SEED,
    fit_ivon,
    ivon,
    ivon_state,
    npe_model,
    npe_pairs,
    regression,
    regression_data,
    worker,
)

from vitorch.sbi import train_npe
from vitorch.training.compile import fused_adam

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainers_ddp")
    run_two_ranks(worker, out, ["torch._dynamo", "vitorch.training", "vitorch.sbi", "trainers_ddp_worker"])
    return [torch.load(out / f"trainers{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# Float64: the two sides sum the same terms in another order (DDP's all-reduce of two 4-row
# mean gradients against one 8-row mean), a few ulps per step; a handful of IVON or Adam steps
# keep that below 1e-10 relative.  A real discrepancy (another draw on one rank, a wrong shard,
# an unaveraged gradient) moves the parameters by O(lr) = 5e-2 (IVON) or >= 5e-3 (NPE's Adam).
TOL = dict(rtol=1e-9, atol=1e-11)


def assert_all_close(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def one_process_ivon(make_optimizer):
    net = regression()
    opt = make_optimizer(net)
    hist = fit_ivon(net, opt, batch_size=2 * PER_RANK)  # the union of the two ranks' batches
    return [p.detach() for p in net.parameters()], ivon_state(opt), [r["loss"] for r in hist.steps]


@pytest.mark.parametrize("run", ["factory", "mc2"])
def test_ivon_on_two_ranks_equals_one_process_on_the_union_batch(ranks, run):
    if run == "factory":
        torch.manual_seed(SEED)  # rank 0's stream, from which fit's factory draws the noise seed
        want, state, losses = one_process_ivon(lambda net: ivon(net.parameters()))
    else:  # rank 0's explicit seed wins on every rank
        want, state, losses = one_process_ivon(lambda net: ivon(net.parameters(), seed=100, mc_samples=2))
    for rank in ranks:
        got, got_state, got_losses = rank["ivon"][run]
        assert_all_close(got, want)
        assert_all_close(got_state["hess"], state["hess"])
        assert_all_close(got_state["momentum"], state["momentum"])
        assert got_state["seed"] == state["seed"]
        assert got_losses == pytest.approx(losses, rel=1e-9)  # the logged loss is the global one


def test_ivon_noise_and_state_are_identical_across_ranks(ranks):
    r0, r1 = (r["ivon"] for r in ranks)
    # Without the broadcast the ranks would have drawn other noise: rank 1's factory drew
    # its seed from its reseeded stream, and run mc2 passed rank-dependent seeds.
    assert r0["drawn_seed"] != r1["drawn_seed"]
    for run in ("factory", "mc2", "resumed"):
        (p0, s0, *_), (p1, s1, *_) = r0[run], r1[run]
        assert all(torch.equal(a, b) for a, b in zip(p0, p1))
        assert all(torch.equal(a, b) for a, b in zip(s0["hess"] + s0.get("momentum", []), s1["hess"] + s1["momentum"]))
        assert s0["seed"] == s1["seed"] and s0["generators"].keys() == s1["generators"].keys()
        assert all(torch.equal(s0["generators"][k], s1["generators"][k]) for k in s0["generators"])


def test_ivon_resume_under_ddp_is_bit_identical(ranks):
    for rank in ranks:
        (want, want_state, _), (got, got_state) = rank["ivon"]["factory"], rank["ivon"]["resumed"]
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert all(torch.equal(a, b) for a, b in zip(got_state["hess"], want_state["hess"]))
        assert got_state["seed"] == want_state["seed"]
        assert all(torch.equal(got_state["generators"][k], v) for k, v in want_state["generators"].items())


def test_npe_mle_on_two_ranks_equals_one_process_on_the_union_batch(ranks):
    theta, x = npe_pairs()
    npe = npe_model()
    hist = train_npe(npe, theta, x, batch_size=2 * PER_RANK, max_epochs=MLE_EPOCHS, patience=1, lr=MLE_LR, seed=7,
                     fisher_penalty=0.1)  # fmt: skip
    want = [p.detach() for p in npe.parameters()]
    # the run does stop early and restores weights older than the last step's
    assert hist.stop_reason == "early_stopping" and hist.best_step < hist.steps[-1]["step"]
    for rank in ranks:
        got, losses, evals, reason, best = rank["npe"]["mle"]
        assert_all_close(got, want)  # the restored best weights
        assert losses == pytest.approx([r["loss"] for r in hist.steps], rel=1e-9)
        # the held-out log q is the global mean over both shards: the same early-stopping decisions
        assert [e["step"] for e in evals] == [e["step"] for e in hist.evals]
        assert [e["bound"] for e in evals] == pytest.approx([e["bound"] for e in hist.evals], rel=1e-9)
        assert (reason, best) == (hist.stop_reason, hist.best_step)


def shard(t, rank: int, step: int, n: int):
    """Rank ``rank``'s rows at ``step`` (no shuffle: DistributedSampler deals rows alternately)."""
    per_epoch = -(-n // (2 * PER_RANK))
    b = step % per_epoch
    return t[rank::2][b * PER_RANK : (b + 1) * PER_RANK]


def test_npe_atomic_on_two_ranks_equals_the_one_process_emulation(ranks):
    theta, x = npe_pairs()
    npe = npe_model()
    npe.set_standardization(theta, x)
    npe.loss_kind, npe.num_atoms = "atomic", ATOMS
    streams = []
    for seed in (SEED, SEED + 1):
        torch.manual_seed(seed)
        streams.append(torch.get_rng_state())
    optimizer, logged, n = fused_adam(npe.parameters(), lr=NPE_LR), [], theta.shape[0]
    per_epoch = -(-n // (2 * PER_RANK))
    for step in range(NPE_STEPS):
        losses = []
        for rank in (0, 1):
            torch.set_rng_state(streams[rank])
            if step % per_epoch == 0:  # each epoch's DataLoader iterator draws from the global stream
                torch.empty((), dtype=torch.int64).random_()
            batch = (shard(theta, rank, step, n), shard(x, rank, step, n))
            losses.append(npe(batch).loss)
            streams[rank] = torch.get_rng_state()
        loss = (losses[0] + losses[1]) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logged.append(loss.item())
    for rank in ranks:
        got, got_losses = rank["npe"]["atomic"]
        assert_all_close(got, [p.detach() for p in npe.parameters()])
        assert got_losses == pytest.approx(logged, rel=1e-9)


def test_npe_without_a_seed_holds_out_the_same_pairs_on_every_rank(ranks):
    # Without a seed, train_npe takes rank 0's draw from its global stream on every rank; one
    # process drawing the same seeds from the same stream reaches the same weights.  Had rank 1
    # split with its own (reseeded) stream in the second call, the ranks would train on other
    # rows and validate on rows the other rank trains on: other losses and weights.
    theta, x = npe_pairs()
    npe = npe_model()  # leaves the global stream where the workers' was
    losses = []
    for _ in range(2):
        seed = int(torch.randint(2**62, ()).item())
        hist = train_npe(npe, theta, x, batch_size=2 * PER_RANK, max_epochs=2, lr=NPE_LR, seed=seed)
        losses += [r["loss"] for r in hist.steps] + [e["bound"] for e in hist.evals]
    for rank in ranks:
        got, got_losses = rank["npe"]["unseeded"]
        assert_all_close(got, [p.detach() for p in npe.parameters()])
        assert got_losses == pytest.approx(losses, rel=1e-9)


def test_broadcast_noise_outside_a_process_group_keeps_the_noise_and_refuses_pending_draws():
    assert not dist.is_initialized()
    net = regression()
    opt = ivon(net.parameters(), seed=3)
    with opt.sampled_params():
        pass  # creates the generator and advances it
    before = opt.state_dict()["noise"]
    opt.broadcast_noise()
    after = opt.state_dict()["noise"]
    assert after["seed"] == 3 and all(torch.equal(after["generators"][k], v) for k, v in before["generators"].items())
    with opt.sampled_params(train=True):
        net(tuple(t[:4] for t in regression_data())).backward()
    with pytest.raises(RuntimeError, match="between steps"):
        opt.broadcast_noise()
