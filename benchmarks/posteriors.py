"""Automatic guides on standard posteriors: accuracy against NUTS references, speed against Pyro and NumPyro.

For each model of ``benchmarks/reference/models.py`` and each guide family (``diag``,
``full``, ``flow``), four fits run on the same density, from the same start, for the
same number of steps and particles, with Adam at the same learning rate:

* vitorch eager: ``AutoGuide`` + ``VI`` (ELBO, reparameterization gradients), one
  ``loss.backward(); opt.step()`` per step with torch's fused Adam (what ``vt.fit`` builds);
* Pyro: ``AutoNormal`` / ``AutoMultivariateNormal`` / ``AutoIAFNormal`` with
  ``Trace_ELBO`` on ``models.pyro_model`` (improper-uniform sites and the same log
  joint through a factor; ``AutoIAFNormal`` ignores the start);
* vitorch compiled: the same ``VI`` trained by ``VI.fused_step`` (draw, density,
  gradient and Adam's update in one compiled call), or with ``--compiled compile_step``
  by ``vitorch.training.compile_step`` (compiled forward, autograd backward, fused
  Adam); the first call compiles, untimed, and Dynamo is reset before each fit;
* NumPyro: ``SVI`` with ``AutoNormal`` / ``AutoMultivariateNormal`` / ``AutoIAFNormal``
  on ``numpyro_models.numpyro_model(name)`` (checked equal to ``model.log_density`` by
  ``reference/nuts.py``), ``jax.jit(svi.update)`` (its first call compiles, untimed).

Each step is timed on its own and the median per step is reported; the accuracy checks
(10 per fit, 4000 draws each) are not timed.  A fit whose loss or draws stop being
finite, or whose step raises, is reported as diverged (``*_diverged_at_step``,
``*_error``) and the run goes on.  Eager vitorch and Pyro are compared on the clock the
harness reads (thread CPU time with ``--cpu-time``); compiled vitorch and NumPyro on
process CPU time (every thread of the process: XLA may run a computation on a thread
other than the caller's; set ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"``, which this script does when it is unset), with both
sides' wall-clock medians alongside.

The fitted guide's draws, mapped to the constrained scalars, are compared with the NUTS
reference ``benchmarks/reference/<model>.json`` (written by ``reference/nuts.py``):
``max_mean_err_sd`` is the largest |posterior mean error| in reference standard
deviations, ``median_sd_ratio`` the median over scalars of guide sd / reference sd.
A reference that does not qualify (R-hat >= 1.01 or ESS <= 400) is used but flagged.
Each fit takes a ``seed`` (default 0: the draws, never the start); ``posteriors_seeds.py``
repeats the fits over seeds and reports the mean and standard error of their accuracy.

One JSON line per (model, guide, peer) in the harness's format
(``ratio = peer_s / vitorch_s``, so > 1 means vitorch is faster per step).
``--table-from results.jsonl`` prints the Markdown table of a saved run instead.

    python benchmarks/posteriors.py [--quick] [--models a,b] [--guides diag,full,flow] [--steps 2000]
        [--peers pyro,numpyro] [--compiled fused|compile_step] [--threads 1 --cpu-time]

References:
    Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017);
    Bingham et al., *Pyro: Deep Universal Probabilistic Programming* (JMLR 2019);
    Phan, Pradhan & Jankowiak, *Composable Effects for Flexible and Accelerated
    Probabilistic Programming in NumPyro* (2019);
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?* (ICML 2018).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "reference"))
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
from nuts import constrained_scalars, reference  # noqa: E402

from models import MODELS, pyro_model  # noqa: E402
from vitorch.model import VI, AutoGuide, Model  # noqa: E402
from vitorch.training import compile_step  # noqa: E402
from vitorch.training.compile import fused_adam  # noqa: E402

import _harness  # noqa: E402
from _harness import parser, report, setup, try_import  # noqa: E402

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
    """``(max |mean error| / ref sd, median sd / ref sd)`` of constrained draws ``[S, P]``."""
    mean, sd = torch.tensor(ref["mean"]), torch.tensor(ref["sd"])
    draws = draws.to(mean.dtype)
    err = ((draws.mean(0) - mean).abs() / sd).max().item()
    return err, (draws.std(0) / sd).median().item()


def train(step, evaluate, steps: int, clock: str = "harness") -> dict:
    """Run ``steps`` calls of ``step()``, each timed on three clocks; evaluate ``CHECKS`` times (untimed).

    ``step()`` returns the loss (a number or 0-d tensor), read after the clocks: a
    non-finite loss, a step that raises, or a non-finite accuracy check ends the fit as
    *diverged* (``diverged_at_step``, ``error``), with the step times taken so far; the run goes on.

    Returns the medians per step (``wall_s``; ``cpu_s`` on the harness's clock; ``process_cpu_s``,
    the CPU time of all the process's threads, which counts XLA's worker threads), the
    final accuracy, and ``seconds_to_accuracy``: the summed step time (on ``clock``:
    the harness's, or ``"process"``) at which the error first came within 0.05 reference
    sd of its final value.
    """
    walls, cpus, procs, curve, elapsed = [], [], [], [], 0.0
    every = max(1, steps // CHECKS)
    diverged, error = None, None
    for i in range(1, steps + 1):
        t0, c0, p0 = time.perf_counter(), _harness._clock(), time.process_time()
        try:
            value = step()
        except Exception as err:  # a peer's validation error on NaN parameters, a failed solve...
            diverged, error = i, f"{type(err).__name__}: {str(err)[:200]}"
            break
        cpus.append(_harness._clock() - c0)
        procs.append(time.process_time() - p0)
        walls.append(time.perf_counter() - t0)
        elapsed += procs[-1] if clock == "process" else cpus[-1]
        if not math.isfinite(float(value)):
            diverged, error = i, "non-finite loss"
            break
        if i % every == 0 or i == steps:
            err, ratio = evaluate()
            if not (math.isfinite(err) and math.isfinite(ratio)):
                diverged, error = i, "non-finite draws"
                break
            curve.append((elapsed, err, ratio))

    def median(xs):
        return statistics.median(xs) if xs else None

    if diverged is not None:  # say so; no NaN in the JSON
        final_err = final_ratio = reach = None
    else:
        final_err, final_ratio = curve[-1][1], curve[-1][2]
        reach = next(t for t, e, _ in curve if e <= final_err + 0.05)
    return {
        "diverged_at_step": diverged,
        "error": error,
        "wall_s": median(walls),
        "cpu_s": median(cpus),
        "process_cpu_s": median(procs),
        "max_mean_err_sd": None if final_err is None else round(final_err, 3),
        "median_sd_ratio": None if final_ratio is None else round(final_ratio, 3),
        "seconds_to_accuracy": None if reach is None else round(reach, 2),
    }


def run_vitorch(
    model: Model, kind: str, steps: int, particles: int, lr: float, ref: dict, variant: str, seed: int = 0
) -> dict:
    """One fit; ``variant``: ``"eager"`` (``vt.fit``'s step: fused Adam, autograd), ``"fused"``
    (``VI.fused_step``: the whole step one compiled call) or ``"compile_step"``
    (``vitorch.training.compile_step``: compiled forward, autograd backward, fused Adam).
    ``seed`` seeds the draws (and a flow's initial inner weights), never the start point."""
    torch.manual_seed(seed)
    guide = AutoGuide(model, kind)
    vi = VI(model, guide, particles)
    if variant != "eager":
        torch.compiler.reset()  # each fit compiles afresh: no earlier model's graphs or guards linger
        if variant == "fused":
            one = vi.fused_step(lr)
        else:
            step = compile_step(vi, fused_adam(vi.parameters(), lr))

            def one():
                return step(None).loss.detach()

        try:
            one()  # compiles (tens of seconds), untimed; counted as one of the steps
        except Exception as err:
            return {"diverged_at_step": 1, "error": f"{type(err).__name__}: {str(err)[:200]}"}
        steps -= 1
    else:
        opt = fused_adam(vi.parameters(), lr)  # what vt.fit builds

        def one():
            out = vi()
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            return out.loss.detach()

    def evaluate():
        with torch.no_grad():
            return accuracy(constrained_scalars(model, guide().sample((NUM_DRAWS,))), ref)

    return train(one, evaluate, steps, "harness" if variant == "eager" else "process")


def run_pyro(model: Model, kind: str, steps: int, particles: int, lr: float, ref: dict, seed: int = 0) -> dict:
    import pyro
    from pyro.infer import SVI, Trace_ELBO, autoguide

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
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
            return accuracy(torch.cat(flat, -1), ref)

    return train(svi.step, evaluate, steps)


def _unpack(guide, z: torch.Tensor):
    """``(site, constrained value [S, *shape])`` from AutoContinuous latents ``z [S, D]``."""
    from torch.distributions import biject_to

    for site, unconstrained in guide._unpack_latent(z):
        yield site, biject_to(site["fn"].support)(unconstrained)


def run_numpyro(
    name: str, model: Model, kind: str, steps: int, particles: int, lr: float, ref: dict, seed: int = 0
) -> dict:
    import jax
    import numpy as np
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO, autoguide
    from numpyro.infer.initialization import init_to_value

    jax.config.update("jax_enable_x64", True)
    from numpyro_models import numpyro_model

    fn, names = numpyro_model(name)
    init = {k: jax.numpy.asarray(v[0].numpy()) for k, v in model.constrain(model.init().unsqueeze(0)).items()}
    options = {"init_loc_fn": init_to_value(values=init)}
    if kind != "flow":
        options["init_scale"] = 0.1
    guide = getattr(autoguide, PYRO_GUIDES[kind])(fn, **options)
    svi = SVI(fn, guide, numpyro.optim.Adam(lr), Trace_ELBO(num_particles=particles))
    update = jax.jit(svi.update)
    state = [svi.init(jax.random.PRNGKey(seed))]
    state[0], loss = update(state[0])  # compiles, untimed; counted as one of the steps
    loss.block_until_ready()

    def one():
        state[0], loss = update(state[0])
        return float(loss)  # waits for XLA

    def evaluate():
        params = svi.get_params(state[0])
        key = jax.random.PRNGKey(1 + 1000 * seed)  # seed 0: the key of earlier runs' checks
        draws = guide.sample_posterior(key, params, sample_shape=(NUM_DRAWS,))
        flat = np.concatenate([np.asarray(draws[k]).reshape(NUM_DRAWS, -1) for k in names], -1)
        return accuracy(torch.from_numpy(flat), ref)

    return train(one, evaluate, steps - 1, "process")


def compare(case: str, ours: dict, peer: str, theirs: dict | None, clock: str, common: dict, skipped=None) -> dict:
    key = {"wall": "wall_s", "process CPU time": "process_cpu_s"}.get(clock, "cpu_s")
    theirs = theirs or {}
    extra = {"metric": "max_mean_err_sd", "vitorch": ours.get("max_mean_err_sd")}
    extra["peer_value"] = theirs.get("max_mean_err_sd")
    for field in ("median_sd_ratio", "seconds_to_accuracy", "diverged_at_step", "error"):
        extra[f"vitorch_{field}"] = ours.get(field)
        extra[f"peer_{field}"] = theirs.get(field)
    extra["vitorch_wall_s"], extra["peer_wall_s"] = ours.get("wall_s"), theirs.get("wall_s")
    extra.update(common, clock=clock)
    if skipped:
        extra["skipped"] = skipped
    return report("posteriors", case, ours.get(key), peer, theirs.get(key), **extra)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated (default all; --quick: eight schools)")
    p.add_argument("--guides", default="diag,full,flow")
    p.add_argument("--peers", default="pyro,numpyro", help="comma-separated subset of pyro,numpyro")
    p.add_argument(
        "--compiled",
        default="fused",
        choices=["fused", "compile_step"],
        help="vitorch's side of the NumPyro comparison: VI.fused_step or vitorch.training.compile_step",
    )
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("-K", "--particles", type=int, default=1)
    p.add_argument("--table-from", default=None, help="print the Markdown table of a saved JSONL run and exit")
    p.set_defaults(threads=1)
    args = p.parse_args()
    if args.table_from:
        print(table(pathlib.Path(args.table_from)))
        return
    setup(args)
    torch.set_default_dtype(torch.float64)
    steps = args.steps or (100 if args.quick else 2000)
    default = "eight_schools_noncentered" if args.quick else ",".join(MODELS)
    models = (args.models or default).split(",")
    peers = args.peers.split(",")
    pyro_mod, pyro_reason = try_import("pyro") if "pyro" in peers else (None, "not asked")
    npy_mod, npy_reason = try_import("numpyro") if "numpyro" in peers else (None, "not asked")
    for name in models:
        ref = load_reference(name, args.quick)
        if ref is None:
            print(json.dumps({"bench": "posteriors", "case": name, "skipped": "no NUTS reference yet"}), flush=True)
            continue
        model = MODELS[name]()
        for kind in args.guides.split(","):
            lr = AutoGuide(model, kind).default_lr
            common = {"steps": steps, "lr": lr, "particles": args.particles, "reference_qualified": ref["qualified"]}
            case = f"{name} {kind}"
            if "pyro" in peers:
                ours = run_vitorch(model, kind, steps, args.particles, lr, ref, "eager")
                theirs = None if pyro_mod is None else run_pyro(model, kind, steps, args.particles, lr, ref)
                common_p = {**common, "vitorch_variant": "eager", "peer_guide": PYRO_GUIDES[kind]}
                compare(case, ours, "pyro", theirs, _harness.clock_name(), common_p, pyro_reason)
            if "numpyro" in peers:
                ours = run_vitorch(model, kind, steps, args.particles, lr, ref, args.compiled)
                theirs = None if npy_mod is None else run_numpyro(name, model, kind, steps, args.particles, lr, ref)
                common_n = {**common, "vitorch_variant": args.compiled, "peer_guide": PYRO_GUIDES[kind]}
                common_n["xla_flags"] = os.environ.get("XLA_FLAGS")
                compare(case + " compiled", ours, "numpyro", theirs, "process CPU time", common_n, npy_reason)


def table(path: pathlib.Path) -> str:
    """Markdown tables of a saved run: accuracy of all four fits and eager speed against Pyro per
    (model, guide); then compiled speed against NumPyro (process CPU time, both sides)."""
    rows: dict[tuple[str, str], dict] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("bench") != "posteriors" or r.get("peer") is None:
            continue
        model, kind = r["case"].split()[:2]
        rows.setdefault((model, kind), {})[r["peer"]] = r

    def acc(r, side):
        if r is None:
            return "—"
        prefix = "vitorch" if side == "v" else "peer"
        err = r["vitorch"] if side == "v" else r["peer_value"]
        if err is None:
            at = r.get(f"{prefix}_diverged_at_step")
            return "diverged" + (f" (step {at})" if at else "")
        ratio = r[f"{prefix}_median_sd_ratio"]
        return f"{err:.2f} / {ratio:.2f}" if err < 1e3 else f"{err:.1e} / {ratio:.2f}"

    def ms(x):
        return "—" if x is None else f"{1e3 * x:.2f}"

    head = "| model | guide | NUTS ref. qualified | vitorch | Pyro | vitorch compiled | NumPyro "
    head += "| vitorch ms | Pyro ms | Pyro / vitorch |"
    out = [head, "|" + " --- |" * 10]
    timing = ["| model | guide | compiled ms | NumPyro ms | NumPyro / compiled |", "|" + " --- |" * 5]
    for (model, kind), by in rows.items():
        py, npy = by.get("pyro"), by.get("numpyro")
        first = py or npy
        cells = [model, kind, "yes" if first["reference_qualified"] else "**no**"]
        cells += [acc(py, "v"), acc(py, "p"), acc(npy, "v"), acc(npy, "p")]
        if py:
            ratio = "—" if py["ratio"] is None else f"{py['ratio']:.1f}x"
            cells += [ms(py["vitorch_s"]), ms(py["peer_s"]), ratio]
        else:
            cells += ["—"] * 3
        out.append("| " + " | ".join(cells) + " |")
        if npy and npy.get("clock") == "process CPU time":
            ratio = "—" if npy["ratio"] is None else f"{npy['ratio']:.2f}x"
            timing.append(f"| {model} | {kind} | {ms(npy['vitorch_s'])} | {ms(npy['peer_s'])} | {ratio} |")
    return "\n".join(out) + ("\n\n" + "\n".join(timing) if len(timing) > 2 else "")


if __name__ == "__main__":
    main()
