"""Automatic guides on standard posteriors: accuracy against NUTS references, speed against Pyro's autoguides.

For each model of ``benchmarks/reference/models.py`` and each guide, vitorch
(``AutoGuide`` + ``VI``, ELBO, reparameterization gradients, Adam) and Pyro
(``AutoNormal``, ``AutoMultivariateNormal``, ``AutoIAFNormal`` with ``Trace_ELBO`` and
Adam) train on the same density (Pyro's model is the same log joint behind
improper-uniform sites, unconstrained by the same ``biject_to`` maps), from the same
start, for the same number of steps, particles and learning rate.  Each fitted guide's
4000 draws are mapped to the constrained scalars and compared with the model's reference
(``benchmarks/reference/<model>.json``, written by ``benchmarks/reference/nuts.py``):

* ``max_mean_err``: the largest |posterior mean error| in reference standard deviations;
* ``median_sd_ratio``: the median over scalars of guide sd / reference sd;
* ``ms_per_step``: training time per step; ``seconds_to_accuracy``: the time at which the
  error first came within 0.05 reference sd of its final value (checked 10 times per run).

One JSON line per (model, guide, library); with ``--table PATH`` also a Markdown table.
A reference that does not qualify (R-hat >= 1.01 or ESS <= 400) is used but flagged;
``--quick`` runs a short unqualified NUTS in place of a missing reference.

    python benchmarks/posteriors.py [--quick] [--models a,b] [--guides diag,full,flow] [--steps 2000]

References:
    Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017);
    Bingham et al., *Pyro: Deep Universal Probabilistic Programming* (JMLR 2019);
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?* (ICML 2018).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "reference"))
from nuts import constrained_scalars, reference  # noqa: E402

from models import MODELS, pyro_model  # noqa: E402
from vitorch.model import VI, AutoGuide, Model  # noqa: E402

from _harness import parser, setup, try_import  # noqa: E402

PYRO_GUIDES = {"diag": "AutoNormal", "full": "AutoMultivariateNormal", "flow": "AutoIAFNormal"}
NUM_DRAWS = 4000
CHECKS = 10


def load_reference(name: str, quick: bool) -> dict | None:
    path = HERE / "reference" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    if quick:
        return {**reference(name, 1, 100, 200), "qualified": False}
    return None


def accuracy(draws: torch.Tensor, ref: dict) -> tuple[float, float]:
    mean, sd = torch.tensor(ref["mean"]), torch.tensor(ref["sd"])
    err = ((draws.mean(0) - mean).abs() / sd).max().item()
    return err, (draws.std(0) / sd).median().item()


def train(step, evaluate, steps: int) -> dict:
    """Run ``steps`` calls of ``step()``, evaluating accuracy ``CHECKS`` times (untimed)."""
    curve, elapsed = [], 0.0
    every = max(1, steps // CHECKS)
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        step()
        elapsed += time.perf_counter() - t0
        if i % every == 0 or i == steps:
            curve.append((elapsed, *evaluate()))
    final_err, final_ratio = curve[-1][1], curve[-1][2]
    reach = next(t for t, e, _ in curve if e <= final_err + 0.05)
    return {
        "max_mean_err": round(final_err, 3),
        "median_sd_ratio": round(final_ratio, 3),
        "ms_per_step": round(1e3 * elapsed / steps, 3),
        "seconds_to_accuracy": round(reach, 2),
    }


def run_vitorch(model: Model, kind: str, steps: int, particles: int, ref: dict) -> dict:
    torch.manual_seed(0)
    guide = AutoGuide(model, kind)
    vi = VI(model, guide, particles)
    opt = torch.optim.Adam(vi.parameters(), lr=guide.default_lr)

    def step():
        out = vi()
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    def evaluate():
        with torch.no_grad():
            return accuracy(constrained_scalars(model, guide().sample((NUM_DRAWS,))), ref)

    return train(step, evaluate, steps)


def run_pyro(model: Model, kind: str, steps: int, particles: int, lr: float, ref: dict) -> dict:
    import pyro
    from pyro.infer import SVI, Trace_ELBO, autoguide

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    fn = pyro_model(model)
    init = {k: v[0] for k, v in model.constrain(model.init().unsqueeze(0)).items()}
    options = {} if kind == "flow" else {"init_loc_fn": autoguide.init_to_value(values=init)}  # IAF ignores it
    guide = getattr(autoguide, PYRO_GUIDES[kind])(fn, **options)
    svi = SVI(fn, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO(num_particles=particles))

    def evaluate():
        with torch.no_grad():
            if isinstance(guide, autoguide.AutoContinuous):
                z = guide.get_posterior().sample((NUM_DRAWS,))
                values = {site["name"]: v for site, v in _unpack(guide, z)}
            else:
                with pyro.plate("draws", NUM_DRAWS, dim=-1 - max(len(s.shape) for s in model.sites.values())):
                    values = guide()
            flat = [values[name].reshape(NUM_DRAWS, -1) for name in model.sites]
            return accuracy(torch.cat(flat, -1).to(torch.get_default_dtype()), ref)

    return train(svi.step, evaluate, steps)


def _unpack(guide, z: torch.Tensor):
    """``(site, constrained value [S, *shape])`` from AutoContinuous latents ``z [S, D]``."""
    from torch.distributions import biject_to

    for site, unconstrained in guide._unpack_latent(z):
        yield site, biject_to(site["fn"].support)(unconstrained)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated (default all; --quick: eight schools)")
    p.add_argument("--guides", default="diag,full,flow")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("-K", "--particles", type=int, default=1)
    p.add_argument("--table", default=None, help="also write a Markdown table here")
    p.set_defaults(threads=1)
    args = p.parse_args()
    setup(args)
    torch.set_default_dtype(torch.float64)
    steps = args.steps or (100 if args.quick else 2000)
    default = "eight_schools_noncentered" if args.quick else ",".join(MODELS)
    models = (args.models or default).split(",")
    pyro_mod, pyro_reason = try_import("pyro")
    rows = []
    for name in models:
        ref = load_reference(name, args.quick)
        if ref is None:
            print(json.dumps({"bench": "posteriors", "model": name, "skipped": "no reference: run reference/nuts.py"}))
            continue
        model = MODELS[name]()
        for kind in args.guides.split(","):
            lr = AutoGuide(model, kind).default_lr
            libs = ["vitorch"] + ([f"pyro.{PYRO_GUIDES[kind]}"] if pyro_mod is not None else [])
            for lib in libs:
                if lib == "vitorch":
                    result = run_vitorch(model, kind, steps, args.particles, ref)
                else:
                    result = run_pyro(model, kind, steps, args.particles, lr, ref)
                line = {"bench": "posteriors", "model": name, "guide": kind, "library": lib, "steps": steps}
                line.update(result)
                line.update({"lr": lr, "particles": args.particles, "reference_qualified": ref["qualified"]})
                print(json.dumps(line), flush=True)
                rows.append(line)
            if pyro_mod is None:
                print(json.dumps({"bench": "posteriors", "model": name, "guide": kind, "skipped": pyro_reason}))
    if args.table and rows:
        write_table(pathlib.Path(args.table), rows)


def write_table(path: pathlib.Path, rows: list[dict]) -> None:
    head = "| model | guide | library | max mean err (sd) | median sd ratio | ms/step | s to accuracy |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        cells = [r["model"], r["guide"], r["library"], r["max_mean_err"], r["median_sd_ratio"], r["ms_per_step"]]
        lines.append("| " + " | ".join(str(c) for c in [*cells, r["seconds_to_accuracy"]]) + " |")
    os.makedirs(path.parent, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
