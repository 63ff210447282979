"""Worker processes for the DDP tests (spawned; must be importable by name).

Each worker joins a gloo process group on 127.0.0.1 and writes what the parent
compares into ``out/rank<r>.pt``.
"""

from __future__ import annotations

import faulthandler
import os
from pathlib import Path

import torch
import torch.distributed as dist
from fit_models import Regression, RegressionBound, TinyVAE, gaussian_data, regression_data

from vitorch.training import fit

N, PER_RANK = 16, 4  # 16 rows; batches of 4 per rank, 8 across the two ranks


class Stop(Exception):
    pass


class LocalVAE(TinyVAE):
    """TinyVAE that remembers each training step's loss and mean bound on this rank's batch."""

    def __init__(self):
        super().__init__()
        self.local = []

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.local.append((out.loss.item(), out.bound.mean().item()))
        return out


def init_model(cls=Regression, seed: int = 0):
    torch.manual_seed(seed)
    return cls()


def fit_options(**extra) -> tuple:
    x, y = regression_data(N, seed=1)
    options = dict(steps=6, batch_size=PER_RANK, seed=7, lr=0.05, eval_data=regression_data(6, seed=2),
                   eval_every=2, progress=False)  # fmt: skip
    options.update(extra)
    return (x, y), options


def worker(rank: int, world: int, port: int, out: str) -> None:
    out = Path(out)
    # A stuck collective dumps every thread's stack to out/stuck<rank>.txt and exits,
    # which the parent reports as a failed worker instead of waiting forever.
    trace = (out / f"stuck{rank}.txt").open("w")
    faulthandler.dump_traceback_later(120, exit=True, file=trace)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {}
        # 1. DDP's averaged gradient on this rank's half of the data.
        x, y = regression_data(N, seed=1)
        model = init_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        shard = slice(rank * N // world, (rank + 1) * N // world)
        ddp((x[shard], y[shard])).backward()
        result["grads"] = [p.grad.clone() for p in model.parameters()]

        # 2. fit on two processes (fit finds the process group and wraps in DDP itself).
        model = init_model()
        data, options = fit_options(checkpoint_dir=out / "ck", checkpoint_every=3, log_dir=out / "log")
        hist = fit(model, data, **options)
        result["fit"] = [p.detach().clone() for p in model.parameters()]
        result["evals"] = hist.evals
        result["fit_losses"] = [r["loss"] for r in hist.steps]

        # 3. interrupted at step 5 on both ranks, resumed from step-3 on both ranks.
        def interrupt(ctx):
            if ctx.step == 5:
                raise Stop

        model = init_model()
        data, options = fit_options(checkpoint_dir=out / "ck2", checkpoint_every=3)
        try:
            fit(model, data, callbacks=[interrupt], **options)
        except Stop:
            pass
        dist.barrier()  # rank 0 has written step-3 before anyone resumes
        model = init_model(seed=123)
        fit(model, data, resume=out / "ck2", **options)
        result["resumed"] = [p.detach().clone() for p in model.parameters()]

        # 4. a sampling model returning vt.LossOutput, fed by a user's shuffled DataLoader
        # (fit rebuilds it around a DistributedSampler): DDP keeps the ranks' parameters
        # equal, while each rank draws its own particles.
        torch.manual_seed(5)  # the same seed on both ranks on purpose
        model = LocalVAE()
        loader = torch.utils.data.DataLoader(gaussian_data(16), batch_size=4, shuffle=True)
        hist = fit(model, loader, epochs=2, progress=False)
        result["vae"] = [p.detach().clone() for p in model.parameters()]
        result["vae_logged"] = [(r["loss"], r["bound"]) for r in hist.steps]
        result["vae_local"] = model.local

        # 5. a deterministic model with a bound: rank 0 logs the global loss and bound.
        model = init_model(RegressionBound)
        hist = fit(model, regression_data(N, seed=1), steps=3, batch_size=PER_RANK, seed=7, lr=0.05, progress=False)
        result["bound_logged"] = [(r["loss"], r["bound"], r.get("impossible_data")) for r in hist.steps]
        torch.save(result, out / f"rank{rank}.pt")
        dist.barrier()  # both ranks done with every collective before the group goes away
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()
    # Leave without the interpreter's teardown: about one run in ten the child then hung
    # after its results were written (in multiprocessing's exit handling, with gloo's
    # threads still around); everything this worker owes the parent is on disk.
    trace.close()
    os._exit(0)


if __name__ == "__main__":  # torchrun --nproc_per_node=2 tests/training/fit_ddp_worker.py OUT
    import sys

    worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["MASTER_PORT"]), sys.argv[1])
