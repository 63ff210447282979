"""Reference posteriors for benchmarks/posteriors.py: long NUTS runs (Pyro) on each model's unconstrained density.

NUTS runs on ``model.log_density`` itself (Pyro's ``NUTS(potential_fn=...)``), the very
density every vitorch guide approximates, from jittered starts around the model's feasible
point; chains run one after another.  For each model one JSON file is written next to this
script, ``<model>.json``, holding per scalar (constrained, in the order of the summary
table) the mean, sd and 5/50/95 % quantiles, together with what qualifies them: the split
R-hat and the bulk effective sample size of every scalar (Gelman et al., 2013; Vehtari et
al., 2021), the chains, warm-up and draws, the seconds taken, and the command line.

    python benchmarks/reference/nuts.py                      # every model: 4 chains x (1000 + 2500)
    python benchmarks/reference/nuts.py --models glmm_poisson --chains 4 --samples 5000
    python benchmarks/reference/nuts.py --quick              # a smoke run, written to --out (not qualified)
    python benchmarks/reference/nuts.py --backend numpyro    # NumPyro's NUTS on the same density (faster)

A reference qualifies when ``max_rhat < 1.01`` and ``min_ess > 400``; posteriors.py
refuses (reports, does not use) one that does not.

References:
    Hoffman & Gelman, *The No-U-Turn Sampler* (JMLR 2014); Gelman et al., *Bayesian Data
    Analysis* (3rd ed., 2013), sec. 11.4; Vehtari, Gelman, Simpson, Carpenter & Bürkner,
    *Rank-normalization, folding, and localization: an improved R-hat* (Bayesian Analysis 2021).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import MODELS  # noqa: E402
from vitorch.model import Model  # noqa: E402

RHAT_MAX, ESS_MIN = 1.01, 400


def scalar_names(model: Model) -> list[str]:
    names = []
    for name, site in model.sites.items():
        n = site.shape.numel()
        names += [name] if len(site.shape) == 0 else [f"{name}[{i}]" for i in range(n)]
    return names


def constrained_scalars(model: Model, z: torch.Tensor) -> torch.Tensor:
    """``z [*sample, D]`` -> ``[*sample, num_scalars]`` constrained values, flattened site by site."""
    values = model.constrain(z)
    sample = z.shape[:-1]
    return torch.cat([v.reshape(*sample, -1) for v in values.values()], -1)


def run_nuts(model: Model, chains: int, warmup: int, samples: int, seed: int) -> torch.Tensor:
    """Draws ``[chains, samples, D]`` of the unconstrained parameters."""
    import pyro
    from pyro.infer import MCMC, NUTS

    def potential(params):
        return -model.log_density(params["z"].unsqueeze(0))[0]

    out = []
    for c in range(chains):
        pyro.set_rng_seed(seed + c)
        z0 = model.init() + 0.5 * torch.randn(model.dim)  # jittered starts: R-hat can see a stuck chain
        kernel = NUTS(potential_fn=potential, target_accept_prob=0.9)
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, initial_params={"z": z0}, disable_progbar=True)
        mcmc.run()
        out.append(mcmc.get_samples()["z"].detach())
    return torch.stack(out)


def run_numpyro(name: str, model: Model, chains: int, warmup: int, samples: int, seed: int) -> torch.Tensor:
    """Constrained scalars ``[chains, samples, P]`` from NumPyro's NUTS on the same density
    (``numpyro_models.py``), after checking at random points that its potential equals
    ``-model.log_density`` (the same target, Jacobians included)."""
    import jax
    import numpy as np
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import potential_energy

    jax.config.update("jax_enable_x64", True)
    from numpyro_models import numpyro_model

    fn, names = numpyro_model(name)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):  # the same density: flatten NumPyro's unconstrained sites in vitorch's order
        z = model.init() + 0.3 * torch.randn(model.dim, generator=g, dtype=torch.float64)
        params, start = {}, 0
        for site_name in names:
            shape = tuple(model.sites[site_name].shape)
            n = int(np.prod(shape)) if shape else 1
            params[site_name] = jax.numpy.asarray(z[start : start + n].numpy().reshape(shape))
            start += n
        ours = -float(model.log_density(z.unsqueeze(0))[0])
        theirs = float(potential_energy(fn, (), {}, params))
        if abs(ours - theirs) > 1e-8 * max(1.0, abs(ours)):
            raise SystemExit(f"{name}: NumPyro's potential {theirs} != vitorch's {ours}; the models differ")
    kernel = NUTS(fn, target_accept_prob=0.9)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains, chain_method="sequential",
                progress_bar=False)  # fmt: skip
    mcmc.run(jax.random.PRNGKey(seed))
    draws = mcmc.get_samples(group_by_chain=True)
    parts = [np.asarray(draws[k]).reshape(chains, samples, -1) for k in names]
    return torch.from_numpy(np.concatenate(parts, -1))


def summarize(model: Model, z: torch.Tensor, constrained: bool = False) -> dict:
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    # [chains, samples, P] constrained scalars
    x = z.to(torch.float64) if constrained else constrained_scalars(model, z.to(torch.float64))
    flat = x.reshape(-1, x.shape[-1])
    q = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95], dtype=flat.dtype), dim=0)
    rhat = (
        split_gelman_rubin(x, chain_dim=0, sample_dim=1) if x.shape[1] >= 4 else torch.full_like(flat[0], float("nan"))
    )
    ess = effective_sample_size(x, chain_dim=0, sample_dim=1)
    return {
        "names": scalar_names(model),
        "mean": flat.mean(0).tolist(),
        "sd": flat.std(0).tolist(),
        "q05": q[0].tolist(),
        "q50": q[1].tolist(),
        "q95": q[2].tolist(),
        "rhat": rhat.tolist(),
        "ess": ess.tolist(),
        "max_rhat": float(rhat.nan_to_num(float("inf")).max()),
        "min_ess": float(ess.min()),
    }


def reference(name: str, chains: int, warmup: int, samples: int, seed: int = 0, backend: str = "pyro") -> dict:
    model = MODELS[name]()
    t0 = time.perf_counter()
    if backend == "numpyro":
        x = run_numpyro(name, model, chains, warmup, samples, seed)
        stats = summarize(model, x, constrained=True)
    else:
        stats = summarize(model, run_nuts(model, chains, warmup, samples, seed))
    result = {"model": name, "dim": model.dim, "backend": backend, "chains": chains, "warmup": warmup}
    result.update(samples=samples, **stats)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["qualified"] = result["max_rhat"] < RHAT_MAX and result["min_ess"] > ESS_MIN
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--samples", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--backend",
        choices=("pyro", "numpyro"),
        default="pyro",
        help="Pyro's NUTS on model.log_density itself, or NumPyro's on numpyro_models.py "
        "(the same density, checked at random points first; much faster on a CPU)",
    )
    p.add_argument("--quick", action="store_true", help="1 chain x (100 + 200): a smoke run, never qualified")
    p.add_argument("--out", default=str(HERE), help="where <model>.json goes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    if args.quick:
        args.chains, args.warmup, args.samples = 1, 100, 200
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/reference/nuts.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    for name in args.models.split(","):
        result = reference(name, args.chains, args.warmup, args.samples, args.seed, args.backend)
        result["command"] = command.strip()
        result["qualified"] = result["qualified"] and not args.quick
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
        keys = ("model", "max_rhat", "min_ess", "seconds", "qualified")
        print(json.dumps({k: result[k] for k in keys}), flush=True)


if __name__ == "__main__":
    main()
