"""Worker for the zoo DDP tests: one model of each zoo trained by ``vt.fit`` on two gloo ranks.

The zoo models are built here, so the test and the worker make the same ones.  Each
worker writes ``out/zoo<rank>.pt``: per model, the trained parameters and the losses it
logged.  ``shuffle=False`` makes the split plain: ``DistributedSampler`` gives rank ``r``
the rows ``r, r + 2, r + 4, ...`` (rank r's batch b is rows ``r + 2 (PER_RANK b + i)``).
"""

from __future__ import annotations

import faulthandler
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributions import Independent, Normal

import vitorch as vt
from vitorch.models import gp, last_layer, ssm, vae

N, PER_RANK, STEPS, LR, SEED, EVAL_K = 16, 4, 4, 0.05, 5, 7


def data(name: str):
    g = torch.Generator().manual_seed(11)
    if name == "vae":
        return torch.bernoulli(torch.full((N, 12), 0.4, dtype=torch.float64), generator=g)
    if name in ("svgp", "vbll"):
        x = torch.rand(N, 2, generator=g, dtype=torch.float64) * 3
        return x, torch.sin(2 * x).sum(-1) + 0.1 * torch.randn(N, generator=g, dtype=torch.float64)
    if name == "ssm":  # N sequences of T = 5 counts from 3 Poisson channels
        return torch.poisson(torch.full((N, 5, 3), 2.0, dtype=torch.float64), generator=g)
    raise KeyError(name)


class Log1p(nn.Module):
    def forward(self, y):
        return torch.log1p(y)


def model(name: str) -> nn.Module:
    """The zoo's model, built after ``torch.manual_seed(SEED)`` (the same weights on every rank)."""
    torch.manual_seed(SEED)
    if name == "vae":  # stochastic: IWAE over three reparameterized particles per datum
        return vae.VAE.mlp(12, latent_dim=2, hidden=(8,), objective=vt.objectives.iwae, num_particles=3)
    if name == "vbll":
        return last_layer.VBLLModel(nn.Sequential(nn.Linear(2, 8), nn.ELU()), last_layer.VBLLRegression(8), N)
    if name == "svgp":
        x, _ = data("svgp")
        return gp.SVGP(gp.RBF(torch.ones(2)), x[::4].clone(), gp.GaussianLikelihood(noise=0.1), num_data=N)
    if name == "ssm":  # stochastic: the amortized structured guide, IWAE with DReG
        init = lambda: Independent(Normal(torch.zeros(2), 1.0), 1)  # noqa: E731
        prior = ssm.StateSpaceModel(
            init,
            ssm.GaussianTransition(0.8 * torch.eye(2), 0.3, learn_scale=True),
            ssm.PoissonEmission(nn.Linear(2, 3)),
        )
        guide = ssm.StructuredInferenceNetwork(3, 2, rnn_dim=8, embed=Log1p())
        return ssm.SSMVI(prior, guide, num_particles=3, objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
    raise KeyError(name)


MODELS = ("vae", "vbll", "svgp", "ssm")


def train(name: str, **extra):
    net = model(name)
    torch.manual_seed(SEED)  # what the ranks' particle streams start from (fit reseeds rank r > 0)
    hist = vt.fit(net, data(name), steps=STEPS, batch_size=PER_RANK, shuffle=False, lr=LR, seed=0,
                  progress=False, **extra)  # fmt: skip
    return [p.detach().clone() for p in net.parameters()], [r["loss"] for r in hist.steps]


def worker(rank: int, world: int, port: int, out: str) -> None:
    out = Path(out)
    trace = (out / f"stuck{rank}.txt").open("w")
    faulthandler.dump_traceback_later(180, exit=True, file=trace)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {name: train(name) for name in MODELS}
        # IWAE-K evaluation with the K particles split across the ranks (4 + 3 of K = 7).
        net = model("vae")
        with torch.no_grad():
            for p, trained in zip(net.parameters(), result["vae"][0]):
                p.copy_(trained)
        result["eval_rng"] = torch.get_rng_state()
        result["eval_ll"] = vae.iwae_log_likelihood(net, data("vae"), num_particles=EVAL_K, chunk_size=2)
        result["evaluate_rng"] = torch.get_rng_state()
        result["eval"] = vae.evaluate(net, data("vae"), num_particles=EVAL_K, chunk_size=2)
        torch.save(result, out / f"zoo{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()
    trace.close()
    os._exit(0)  # see fit_ddp_worker: skip the interpreter's teardown once results are on disk
