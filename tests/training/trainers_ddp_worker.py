"""Worker for the DDP tests of the trainers: IVON and NPE trained by ``vt.fit`` on two gloo ranks.

The models, data and optimizers are built here, so the test and the worker make the same ones.
Each worker writes ``out/trainers<rank>.pt``: the trained parameters, the optimizer states,
the logged losses and held-out evaluations of each run.
"""

from __future__ import annotations

import faulthandler
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import vitorch as vt
from vitorch.optim import IVON
from vitorch.sbi import NPE, box_uniform, simulate, train_npe

N, PER_RANK, STEPS, SEED = 16, 4, 4, 5
NPE_N, NPE_STEPS, NPE_LR, ATOMS = 40, 4, 5e-3, 3
MLE_LR, MLE_EPOCHS = 0.03, 8  # fast enough that the held-out log q turns and early stopping ends the run


class Regression(nn.Module):
    """A small MLP; the loss is the mean squared error per datum (what IVON expects)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))

    def forward(self, batch):
        x, y = batch
        return (self.net(x).squeeze(-1) - y).pow(2).mean()


def regression(seed: int = SEED) -> Regression:
    torch.manual_seed(seed)
    return Regression()


def regression_data():
    g = torch.Generator().manual_seed(11)
    x = torch.rand(N, 2, generator=g, dtype=torch.float64) * 3
    return x, torch.sin(2 * x).sum(-1) + 0.1 * torch.randn(N, generator=g, dtype=torch.float64)


def ivon(params, seed: int | None = None, mc_samples: int = 1) -> IVON:
    # beta2 well below its default so that the Hessian estimate (and with it sigma) moves
    # visibly within a few steps: a noise mismatch between ranks then shows in the means.
    return IVON(params, lr=0.05, ess=N, hess_init=0.5, beta2=0.9, weight_decay=1e-2, mc_samples=mc_samples, seed=seed)


def fit_ivon(net: nn.Module, optimizer, **extra):
    """``vt.fit`` as every IVON run here calls it (``batch_size`` per rank)."""
    options = dict(steps=STEPS, batch_size=PER_RANK, seed=0, progress=False)
    options.update(extra)
    return vt.fit(net, regression_data(), optimizer=optimizer, **options)


def prior():
    return box_uniform(torch.full((2,), -2.0), torch.full((2,), 2.0))


def npe_pairs():
    return simulate(prior(), lambda t: t + 0.3 * torch.randn_like(t), NPE_N, seed=3)


def npe_model() -> NPE:
    torch.manual_seed(SEED)
    return NPE(prior(), x_shape=(2,), transforms=2, hidden=(8,))


def ivon_state(opt: IVON) -> dict:
    state = opt.state_dict()
    return {
        "seed": state["noise"]["seed"],
        "generators": state["noise"]["generators"],
        "hess": [s["hess"] for s in state["state"].values()],
        "momentum": [s["momentum"] for s in state["state"].values()],
    }


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


class Stop(Exception):
    pass


def run_ivon(rank: int, out: Path) -> dict:
    result = {}
    # 1. IVON built by fit from a factory: its default seed comes from each rank's own global
    # stream (fit reseeded rank 1), so the ranks start with different noise seeds.
    drawn = []

    def factory(p):
        opt = ivon(p)
        drawn.append(opt._seed)
        return opt

    torch.manual_seed(SEED)
    net, holder = regression(), {}
    hist = fit_ivon(net, factory, callbacks=[lambda ctx: holder.setdefault("opt", ctx.optimizer)])
    result["factory"] = params(net), ivon_state(holder["opt"]), [r["loss"] for r in hist.steps]
    result["drawn_seed"] = drawn[0]

    # 2. two draws per step and an explicit seed that differs between the ranks.
    net = regression()
    opt = ivon(net.parameters(), seed=100 + rank, mc_samples=2)
    hist = fit_ivon(net, opt)
    result["mc2"] = params(net), ivon_state(opt), [r["loss"] for r in hist.steps]

    # 3. interrupted after step 3, resumed from rank 0's step-2 checkpoint on both ranks.
    def interrupt(ctx):
        if ctx.step == 3:
            raise Stop

    torch.manual_seed(SEED)
    net = regression()
    try:
        fit_ivon(net, factory, checkpoint_dir=out / "ivon_ck", checkpoint_every=2, callbacks=[interrupt])
    except Stop:
        pass
    dist.barrier()  # rank 0 has written step-2 before anyone resumes
    torch.manual_seed(1234 + rank)  # other weights, another default noise seed: the checkpoint decides
    net = regression(seed=99)
    opt = ivon(net.parameters())
    fit_ivon(net, opt, checkpoint_dir=out / "ivon_ck", checkpoint_every=2, resume=out / "ivon_ck")
    result["resumed"] = params(net), ivon_state(opt)
    return result


def run_npe() -> dict:
    result = {}
    # 1. maximum likelihood through train_npe: held-out split, early stopping, best restored.
    theta, x = npe_pairs()
    npe = npe_model()
    hist = train_npe(npe, theta, x, batch_size=PER_RANK, max_epochs=MLE_EPOCHS, patience=1, lr=MLE_LR, seed=7,
                     fisher_penalty=0.1)  # fmt: skip
    result["mle"] = params(npe), [r["loss"] for r in hist.steps], hist.evals, hist.stop_reason, hist.best_step

    # 2. the atomic (APT) loss, whose atoms are drawn within each rank's batch from its own stream.
    npe = npe_model()
    npe.set_standardization(theta, x)
    npe.loss_kind, npe.num_atoms = "atomic", ATOMS
    torch.manual_seed(SEED)
    hist = vt.fit(npe, (theta, x), steps=NPE_STEPS, batch_size=PER_RANK, shuffle=False, lr=NPE_LR, seed=0,
                  progress=False)  # fmt: skip
    result["atomic"] = params(npe), [r["loss"] for r in hist.steps]

    # 3. no seed, twice: the second call comes after fit has reseeded rank 1's global stream,
    # yet both ranks must hold out (and shard) the same pairs.
    npe = npe_model()
    losses = []
    for _ in range(2):
        hist = train_npe(npe, theta, x, batch_size=PER_RANK, max_epochs=2, lr=NPE_LR)
        losses += [r["loss"] for r in hist.steps] + [e["bound"] for e in hist.evals]
    result["unseeded"] = params(npe), losses
    return result


def worker(rank: int, world: int, port: int, out: str) -> None:
    out = Path(out)
    trace = (out / f"stuck{rank}.txt").open("w")
    faulthandler.dump_traceback_later(180, exit=True, file=trace)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {"ivon": run_ivon(rank, out), "npe": run_npe()}
        torch.save(result, out / f"trainers{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()
    trace.close()
    os._exit(0)  # see fit_ddp_worker: skip the interpreter's teardown once results are on disk
