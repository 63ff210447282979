"""Every zoo trains under DDP: two gloo ranks running ``vt.fit`` end where one process does.

One model of each zoo (an IWAE VAE, a VBLL regression model, an SVGP, the SSM zoo's amortized
structured guide with IWAE/DReG) is trained by ``vt.fit`` on two processes with a batch of 4 rows
each.  The one-process reference takes, at each step, the same two 4-row shards, draws each
shard's particles from that rank's own random stream (``vt.fit`` leaves rank 0's stream as the
caller set it and seeds rank ``r`` with ``initial_seed() + r``; each epoch's loader takes one
draw from it), averages the two shards' losses as
DDP averages their gradients, and steps the same fused Adam.  The results then agree to rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ddp_launch import run_two_ranks
from zoo_ddp_worker import EVAL_K, LR, MODELS, PER_RANK, SEED, STEPS, data, model, worker

from vitorch.models import vae
from vitorch.models.vae.evaluation import _stream
from vitorch.training.compile import fused_adam

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo_ddp")
    run_two_ranks(worker, out, ["torch._dynamo", "vitorch.training", "zoo_ddp_worker"])
    return [torch.load(out / f"zoo{r}.pt", weights_only=True) for r in range(2)]


def shard(batch, rank: int, step: int):
    """Rank ``rank``'s batch at ``step``: DistributedSampler (no shuffle) deals rows alternately."""
    take = lambda t: t[rank::2][(step % 2) * PER_RANK : (step % 2 + 1) * PER_RANK]  # noqa: E731
    return tuple(take(t) for t in batch) if isinstance(batch, tuple) else take(batch)


def one_process(name: str):
    torch.set_default_dtype(torch.float64)
    net = model(name)
    streams = []
    for seed in (SEED, SEED + 1):
        torch.manual_seed(seed)
        streams.append(torch.get_rng_state())
    optimizer, batch, logged = fused_adam(net.parameters(), lr=LR), data(name), []
    for step in range(STEPS):
        losses = []
        for rank in (0, 1):
            torch.set_rng_state(streams[rank])
            if step % 2 == 0:  # each epoch's DataLoader iterator draws its base seed from the global stream
                torch.empty((), dtype=torch.int64).random_()
            losses.append(net(shard(batch, rank, step)).loss)
            streams[rank] = torch.get_rng_state()
        loss = (losses[0] + losses[1]) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logged.append(loss.item())
    return [p.detach() for p in net.parameters()], logged


# Float64 throughout: the two sides sum the same terms in another order (DDP's all-reduce of
# the shards' gradients against one backward through their average), a few ulps per step;
# four Adam steps keep that below 1e-10 relative.  A real discrepancy (a wrong shard, the
# same particles on both ranks, an unaveraged gradient) moves parameters by O(lr) = 5e-2.
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", MODELS)
def test_two_rank_fit_equals_one_process_on_the_same_shards(ranks, name):
    want, want_losses = one_process(name)
    for rank in ranks:
        got, losses = rank[name]
        assert len(got) == len(want)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL)
        assert losses == pytest.approx(want_losses, rel=1e-9)  # the logged loss is the global one


def test_ranks_draw_their_own_particles(ranks):
    # Same model, same data on both shards would still differ in noise: check the stochastic zoos
    # indeed used two streams (one stream for both shards gives other parameters).
    torch.set_default_dtype(torch.float64)
    net = model("vae")
    torch.manual_seed(SEED)
    optimizer, batch = fused_adam(net.parameters(), lr=LR), data("vae")
    for step in range(STEPS):
        if step % 2 == 0:
            torch.empty((), dtype=torch.int64).random_()
        loss = (net(shard(batch, 0, step)).loss + net(shard(batch, 1, step)).loss) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not all(torch.allclose(a, b.detach(), **TOL) for a, b in zip(ranks[0]["vae"][0], net.parameters()))


def test_iwae_with_particles_split_across_ranks_equals_the_unsplit_estimate(ranks):
    # Rank r drew its share of the K = 7 particles (4 and 3) from its own stream; one process
    # drawing the same 7 particles (each share from that rank's stream) and taking one
    # log-sum-exp over all of them must give the same IWAE_7 on every rank.  Float64: the two
    # sides differ by rounding in the order of the log-sum-exp (~1e-15), far inside 1e-6.
    torch.set_default_dtype(torch.float64)
    net = model("vae")
    with torch.no_grad():
        for p, trained in zip(net.parameters(), ranks[0]["vae"][0]):
            p.copy_(trained)

    def shares(state_key):
        parts = []
        for rank, share in zip(ranks, (4, 3)):
            torch.set_rng_state(rank[state_key])
            parts.append(_stream(net, data("vae"), share, 100, 2, 1 << 22, split_particles=False))
        return parts

    parts = shares("eval_rng")
    want = torch.logaddexp(parts[0][0], parts[1][0]) - torch.log(torch.tensor(float(EVAL_K)))
    for rank in ranks:
        torch.testing.assert_close(rank["eval_ll"], want, rtol=0, atol=1e-6)
    # evaluate's running sums are all-reduced too: its ELBO is the mean over all 7 particles
    parts = shares("evaluate_rng")
    elbo = float(((parts[0][1] + parts[1][1]) / EVAL_K).mean())
    ll = float((torch.logaddexp(parts[0][0], parts[1][0]) - torch.log(torch.tensor(float(EVAL_K)))).mean())
    for rank in ranks:
        assert rank["eval"]["elbo"] == pytest.approx(elbo, rel=1e-12)
        assert rank["eval"]["log_likelihood"] == pytest.approx(ll, rel=1e-12)
    # and the split is real: one stream's 7 particles give another estimate
    torch.set_rng_state(ranks[0]["eval_rng"])
    alone = vae.iwae_log_likelihood(net, data("vae"), num_particles=EVAL_K, chunk_size=2)
    assert not torch.allclose(alone, want, rtol=0, atol=1e-6)
