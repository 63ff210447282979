"""Automatic guides on standard posteriors over several seeds: accuracy against Pyro and NumPyro.

``benchmarks/posteriors.py`` reads accuracy from one final iterate per fit, which moves
from seed to seed.  This script repeats each fit of that benchmark over seeds and
reports, per (model, guide, library), the mean and the standard error over seeds of the
two accuracy numbers of the final iterate: ``max_mean_err_sd`` (largest |posterior mean
error| in NUTS reference sds) and ``median_sd_ratio`` (median over scalars of guide sd /
reference sd).  Accuracy only: no timing.

Every fit is the one ``posteriors.py`` runs (same density, steps, one particle, Adam at
the guide's ``default_lr`` on both sides), with its accuracy read once, after the last
step, from 4000 draws.  The libraries are vitorch eager (``VI`` + ``AutoGuide``, the
step ``vt.fit`` takes), Pyro and NumPyro (``AutoNormal`` / ``AutoMultivariateNormal`` /
``AutoIAFNormal``).  The start point is the same on every side and for every seed (the
model's ``init()`` for the location, scale 0.1); a seed changes the Monte Carlo draws of
the training steps and of the accuracy check, and for flows the random initial weights
of the inner layers (Pyro's ``AutoIAFNormal`` also ignores the start).

Verdict rule, per (model, guide) and peer: vitorch is *worse* than the peer when its
mean exceeds the peer's by more than two combined standard errors,
``mean_v - mean_p > 2 sqrt(se_v^2 + se_p^2)``, *better* when the peer's exceeds
vitorch's by as much, and *level* otherwise.  It is applied to ``max_mean_err_sd`` and
to the distance of the sd ratio from 1, ``|1 - median_sd_ratio|``.  A diverged fit
(non-finite loss or draws) is left out of the mean and counted.

One JSON line per fit (``"bench": "posteriors_seeds"``, ``library``, ``seed``), then one
comparison line per (model, guide, peer) in the harness's format, with timing fields
null and the means, standard errors and verdicts as extra fields.
``--summarize-from FILE [FILE ...]`` prints the comparison lines of saved fit lines (of
several runs together) and ``--table-from FILE [FILE ...]`` their Markdown table.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        python benchmarks/posteriors_seeds.py --threads 1 --seeds 5 [--models a,b] [--guides diag,full]
        [--libraries vitorch,pyro,numpyro] [--steps 2000] [--quick]

References:
    Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017);
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

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import torch  # noqa: E402

import posteriors  # noqa: E402
from posteriors import MODELS, PYRO_GUIDES, load_reference, run_numpyro, run_pyro, run_vitorch  # noqa: E402
from vitorch.model import AutoGuide  # noqa: E402

from _harness import parser, report, setup, try_import  # noqa: E402

posteriors.CHECKS = 1  # read the accuracy once, after the last step: the final iterate only
LIBRARIES = ("vitorch", "pyro", "numpyro")
PEER_NAMES = {"pyro": "Pyro", "numpyro": "NumPyro"}


def fit(library: str, name: str, model, kind: str, steps: int, lr: float, ref: dict, seed: int) -> dict:
    """One seeded fit of ``library``; the accuracy of its final iterate and whether it diverged."""
    t0 = time.perf_counter()
    if library == "vitorch":
        out = run_vitorch(model, kind, steps, 1, lr, ref, "eager", seed)
    elif library == "pyro":
        out = run_pyro(model, kind, steps, 1, lr, ref, seed)
    else:
        out = run_numpyro(name, model, kind, steps, 1, lr, ref, seed)
    keys = ("max_mean_err_sd", "median_sd_ratio", "diverged_at_step", "error")
    return {**{k: out.get(k) for k in keys}, "fit_wall_s": round(time.perf_counter() - t0, 1)}


def mean_se(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error over seeds (``sd / sqrt(n)``, sample sd); ``None`` where undefined."""
    if not xs:
        return None, None
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return statistics.fmean(xs), se


def verdict(ours: tuple, theirs: tuple) -> str:
    """``worse`` / ``better`` / ``level`` by the two-combined-standard-errors rule (lower is better)."""
    (mv, sv), (mp, sp) = ours, theirs
    if mv is None or mp is None or sv is None or sp is None:
        return "n/a"
    bound = 2 * math.hypot(sv, sp)
    return "worse" if mv - mp > bound else "better" if mp - mv > bound else "level"


def stats(fits: list[dict]) -> dict:
    """Means and standard errors over the non-diverged seeds of one (model, guide, library)."""
    ok = [f for f in fits if f["max_mean_err_sd"] is not None]
    return {
        "n": len(ok),
        "diverged": len(fits) - len(ok),
        "err": mean_se([f["max_mean_err_sd"] for f in ok]),
        "ratio": mean_se([f["median_sd_ratio"] for f in ok]),
        "gap": mean_se([abs(1 - f["median_sd_ratio"]) for f in ok]),
    }


def grouped(lines: list[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    """``{(model, guide): {library: stats}}`` from fit lines, in first-seen order."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in lines:
        if r.get("bench") == "posteriors_seeds" and "library" in r and "skipped" not in r:
            groups.setdefault(tuple(r["case"].split()), {}).setdefault(r["library"], []).append(r)
    return {key: {lib: stats(fits) for lib, fits in by.items()} for key, by in groups.items()}


def summarize(lines: list[dict]) -> list[dict]:
    """One harness comparison line per (model, guide, peer) present in ``lines``."""
    out = []
    for (model, kind), by in grouped(lines).items():
        ours = by.get("vitorch")
        for peer in ("pyro", "numpyro"):
            if ours is None or peer not in by:
                continue
            theirs = by[peer]
            extra = {
                "metric": "max_mean_err_sd",
                "vitorch": _round(ours["err"][0]),
                "peer_value": _round(theirs["err"][0]),
            }
            for side, s in (("vitorch", ours), ("peer", theirs)):
                extra[f"{side}_se"] = _round(s["err"][1])
                extra[f"{side}_median_sd_ratio"], extra[f"{side}_median_sd_ratio_se"] = map(_round, s["ratio"])
                extra[f"{side}_seeds"], extra[f"{side}_diverged"] = s["n"], s["diverged"]
            extra["verdict_max_mean_err"] = verdict(ours["err"], theirs["err"])
            extra["verdict_sd_ratio_gap"] = verdict(ours["gap"], theirs["gap"])
            extra.update(peer_guide=PYRO_GUIDES[kind], rule="worse: mean_v - mean_p > 2 sqrt(se_v^2 + se_p^2)")
            extra["note"] = "accuracy only: no timing"
            out.append(report("posteriors_seeds", f"{model} {kind}", None, peer, None, **extra))
    return out


def _pm(mean: float, se: float | None) -> str:
    """``mean ± se``, with a third decimal where the standard error is below 0.01."""
    digits = 3 if se is not None and se < 0.01 else 2
    return f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def _round(x):
    return None if x is None else round(x, 3)


def table(lines: list[dict]) -> str:
    """Markdown table: mean ± se over seeds of max mean error / sd ratio per library, and the verdicts."""

    def cell(s):
        if s is None:
            return "—"
        if s["n"] == 0:
            return f"diverged ({s['diverged']} of {s['diverged']})"
        text = f"{_pm(*s['err'])} / {_pm(*s['ratio'])}"
        return text + (f" ({s['diverged']} diverged)" if s["diverged"] else "")

    head = "| model | guide | seeds | vitorch | Pyro | NumPyro | vs Pyro | vs NumPyro |"
    out = [head, "|" + " --- |" * 8]
    for (model, kind), by in grouped(lines).items():
        ours = by.get("vitorch")
        seeds = max(s["n"] + s["diverged"] for s in by.values())
        verdicts = []
        for peer in ("pyro", "numpyro"):
            if ours is None or peer not in by:
                verdicts.append("—")
                continue
            e, g = verdict(ours["err"], by[peer]["err"]), verdict(ours["gap"], by[peer]["gap"])
            verdicts.append(e if e == g else f"{e} (sd: {g})")
        cells = [model, kind, str(seeds), cell(ours), cell(by.get("pyro")), cell(by.get("numpyro")), *verdicts]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def read_lines(paths: list[str]) -> list[dict]:
    """The JSON lines of several saved runs, in order."""
    lines = []
    for path in paths:
        lines += [json.loads(x) for x in pathlib.Path(path).read_text().splitlines() if x.strip().startswith("{")]
    return lines


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated (default all; --quick: eight schools)")
    p.add_argument("--guides", default="diag,full")
    p.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated subset of vitorch,pyro,numpyro")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds: 0, 1, ..., seeds - 1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--table-from", nargs="+", default=None, help="print the Markdown table of saved fit lines and exit")
    p.add_argument(
        "--summarize-from", nargs="+", default=None, help="print the comparison lines of saved fits and exit"
    )
    p.set_defaults(threads=1)
    args = p.parse_args()
    if args.table_from:
        print(table(read_lines(args.table_from)))
        return
    if args.summarize_from:
        summarize(read_lines(args.summarize_from))
        return
    libraries = args.libraries.split(",")
    for lib in libraries:
        if lib not in LIBRARIES:
            raise ValueError(f"--libraries: unknown library {lib!r}; choose from {', '.join(LIBRARIES)}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    setup(args)
    torch.set_default_dtype(torch.float64)
    steps = args.steps or (100 if args.quick else 2000)
    seeds = range(args.first_seed, args.first_seed + (min(args.seeds, 2) if args.quick else args.seeds))
    models = (args.models or ("eight_schools_noncentered" if args.quick else ",".join(MODELS))).split(",")
    available = {lib: lib == "vitorch" or try_import(lib)[0] is not None for lib in libraries}
    lines = []
    for name in models:
        ref = load_reference(name, args.quick)
        if ref is None:
            print(json.dumps({"bench": "posteriors_seeds", "case": name, "skipped": "no NUTS reference yet"}))
            continue
        model = MODELS[name]()
        for kind in args.guides.split(","):
            lr = AutoGuide(model, kind).default_lr
            for seed in seeds:
                for lib in libraries:
                    line = {"bench": "posteriors_seeds", "case": f"{name} {kind}", "library": lib, "seed": seed}
                    if not available[lib]:
                        line["skipped"] = try_import(lib)[1]
                    else:
                        line.update(fit(lib, name, model, kind, steps, lr, ref, seed))
                    line.update(steps=steps, lr=lr, particles=1, reference_qualified=ref["qualified"])
                    print(json.dumps(line), flush=True)
                    lines.append(line)
    summarize([r for r in lines if "skipped" not in r])


if __name__ == "__main__":
    main()
