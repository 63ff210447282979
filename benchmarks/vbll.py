"""VBLL regression heads: vitorch against the ``vbll`` package on the same features and settings.

Data: scikit-learn's diabetes set (442 x 10), inputs and targets standardized with
training-split statistics, an 80/20 split fixed by seed.  Feature network
``10 -> 64 -> 64`` (ELU), trained end to end with each head for 1,000 steps at
batch 32, identical initial weights and minibatch order.  Both VBLL heads use a
dense weight covariance, the same prior variance per weight, learned diagonal noise
with the same inverse-Wishart regularizer (1 degree of freedom), KL weight ``1 / N``
and the same initial head (``q`` equal to the prior with zero mean, noise variance
1).  A plain Gaussian MLP head (mean and log-variance outputs, Gaussian NLL) sets the
cost floor, and scikit-learn's ``BayesianRidge`` on the raw inputs sets the NLL bar.
Every model is trained by the same optimizer with the same settings.

Timing: each line reports the median wall time (thread CPU time with ``--cpu-time``,
named in the line's ``clock``) of the whole 1,000-step training run,
timed interleaved in one process, and as extras the standardized test NLL (per
target) after it: median, minimum and maximum over the runs, which differ in the
seed of the feature network's initialization and of the minibatch order.  The full
run covers :data:`CONFIGS`: the ``vbll`` package's default settings with torch's
default ``Adam``, and the setting chosen on validation data with torch's default and
with its fused ``AdamW`` (``--quick``: the chosen setting only, 100 steps, one run).

At the chosen setting the comparison adds vitorch's post hoc recipes, timed with the
training they follow: after the last step, the head is refit in closed form on the
trained features of the whole training split, either at the evidence maximum
(``solve_posterior(phi, y, tune=True)``: prior scale and noise variance by type-II
maximum likelihood, then the exact posterior) or at the training prior
(``solve_posterior(phi, y)``, the ELBO's closed-form optimum).

Every vitorch model here is a :class:`~vitorch.models.last_layer.VBLLModel` (features
and head; ``model((x, y))`` returns the :class:`vitorch.LossOutput`), trained by the same
hand-written loop as its peers (the benchmark times that loop for every model alike).

The run ends with the heteroscedastic heads (also in ``--quick``), at the decay
chosen for them on validation (:data:`CHOSEN_HETEROSCEDASTIC`): vitorch's
``VBLLHeteroscedasticRegression`` with a dense ``q(U)`` against the ``vbll`` package's
``HetRegression`` (parameterization "dense": dense ``q(W)`` and ``q(M)``), vitorch's
default diagonal ``q(U)`` timed in the same loop, and the MLP head (full run: also with
torch's fused ``AdamW`` on every side, ``vitorch.fit``'s default).  Mapping: vbll
divides its prior "scales" by ``in_features`` and means variances by them, so its
``prior_scale = D * prior variance`` and ``noise_prior_scale = D * 0.01`` give both
heads the same per-weight prior variances (``1/64`` and ``0.01``); both start at their
priors with zero means.  The models differ where neither library can express the
other's: vbll scales the weights' covariance by each datum's noise (predictive
``N(m^T phi, (1 + phi^T S phi) sigma^2(phi))``) and has no offset in its
log-variance ``M phi``; vitorch's weights are independent of the noise (predictive
``N(m^T phi, phi^T S phi + sigma^2(phi))``) and its log-variance ``u^T phi + c`` has a
learned offset ``c``.  Both predictives are scale mixtures over a Gaussian
log-variance, so one Gauss-Hermite quadrature (:func:`gauss_hermite_nll`, 64 nodes)
scores both; vbll's own score (the mean NLL over 20 sampled noise variances) is
reported beside it.

``--select`` instead trains on 80% of the training split and scores the other 20%
(the test split is not touched), three seeds each: the end-to-end Gaussian head over
a small grid (prior variance, inverse-Wishart scale, decoupled weight decay of the
feature network), every other vitorch recipe (:data:`RECIPES`: the two refits, the
Student-t head and refit, both heteroscedastic heads) over the decay, and vbll's
``HetRegression`` over the decay for reference.  It prints each recipe's best setting
and the recipe with the lowest validation NLL of all (:data:`VALIDATION_CHOICE`,
whose line in the full run carries ``headline``).  :data:`CHOSEN` holds the end-to-end
head's pick, and each comparison gives every model the same setting.

    python benchmarks/vbll.py [--quick] [--threads 1] [--repeats R] [--select]

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, replace

from _vbll_setup import (
    CHOSEN,
    CHOSEN_HETEROSCEDASTIC,
    CONFIGS,
    DECAYS,
    PEER_CHOSEN_HETEROSCEDASTIC,
    RECIPES,
    REFITS,
    VALIDATION_CHOICE,
    WIDTH,
    HeteroscedasticDenseModel,
    HeteroscedasticModel,
    MLPModel,
    PeerHeteroscedasticModel,
    PeerModel,
    Settings,
    VitorchModel,
    _spread,
    _vbll_missing,
    bayesian_ridge_nll,
    load_diabetes,
    train,
    validation_split,
    vbll,
)

from _harness import clock_name, interleaved_medians, parser, report, setup


def select(data, steps: int, seeds: int) -> None:
    """Score every recipe's settings on a validation split carved from the training split.

    Prints one line per (recipe, setting), then each recipe's best setting and the
    recipe with the lowest validation NLL of all: the model selection the NLL target's
    headline row follows (:data:`VALIDATION_CHOICE`).  The test split is not read.
    """
    val = validation_split(data)
    print(f"# validation: fit on {len(val[1])}, score on {len(val[3])}; BayesianRidge {bayesian_ridge_nll(val):.4f}")
    # A first pass over [1/64, 1] x [1e-2, 1e-1, 1] x [0, 0.1, 1] found the scale of the
    # noise prior immaterial (N = 282 data outweigh it) and the best weight decay at the
    # grid's edge; the grid was widened in decay (twice) and prior variance until the
    # validation NLL turned up again on both sides.
    grid = itertools.product([1.0 / WIDTH, 1.0, 10.0], [1e-2, 1.0], DECAYS)
    rows = [("vitorch", VitorchModel, Settings(prior_var=p, wishart_scale=w, weight_decay=d)) for p, w, d in grid]
    rows += [(name, cls, Settings(weight_decay=d)) for name, cls in RECIPES.items() for d in DECAYS]
    # The vbll package's HetRegression is scored too, to show whether it would have chosen
    # another decay for itself; it is a peer, not a candidate.
    if vbll is not None:
        rows += [("vbll_heteroscedastic", PeerHeteroscedasticModel, Settings(weight_decay=d)) for d in DECAYS]
    best: dict[str, tuple[float, Settings]] = {}
    for name, cls, s in rows:
        line = {"head": name, **{k: v for k, v in asdict(s).items() if k != "optimizer"}}
        try:
            line["val_nll"] = _spread([train(cls, val, steps, 32, seed, s) for seed in range(seeds)])["median"]
        except ValueError as err:  # a refit whose evidence has no finite maximizer
            line["val_nll"], line["error"] = float("nan"), str(err)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}, flush=True)
        if line["val_nll"] < best.get(name, (math.inf,))[0]:
            best[name] = (line["val_nll"], s)
    for name, (v, s) in best.items():
        print({"best_of": name, "val_nll": round(v, 4), "weight_decay": s.weight_decay, "prior_var": s.prior_var})
    pick = min((name for name in best if name.startswith("vitorch")), key=lambda n: best[n][0])
    print({"validation_picks": pick, "val_nll": round(best[pick][0], 4), "weight_decay": best[pick][1].weight_decay})


def _compare(data, models: dict, s: Settings, steps: int, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Median times (interleaved) and NLL spreads of ``models`` trained at ``s``; seed = run index.

    ``models`` maps names to model classes, or to ``(class, settings)`` for a model trained at
    settings of its own (the compiled comparisons time eager and compiled models together).
    """
    models = {name: m if isinstance(m, tuple) else (m, s) for name, m in models.items()}
    nlls: dict[str, list[float]] = {name: [] for name in models}
    sampled: list[float] = []  # vbll's own HetRegression score, by its 20 noise draws

    def runner(name, cls, settings):
        def run():
            model_nll = train(cls, data, steps, 32, len(nlls[name]), settings, keep=sampled)
            nlls[name].append(model_nll)

        return run

    for cls, settings in models.values():  # pay one-time costs (first calls, compiling) untimed
        train(cls, data, 5, 32, 0, settings)
    fns = {n: runner(n, *m) for n, m in models.items()}
    times = interleaved_medians(fns, repeats=repeats, warmup=warmup)
    nll = {k: _spread(v) for k, v in nlls.items()}
    if sampled:
        nll["vbll_sampled"] = _spread(sampled)
    return times, nll


PARTS = ["homoscedastic", "heteroscedastic", "compiled"]


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (1000; 100 with --quick)")
    p.add_argument("--select", action="store_true", help="score every recipe's settings on a validation split")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="which comparisons to run")
    args = p.parse_args()
    setup(args)
    steps = args.steps or (100 if args.quick else 1000)
    data = load_diabetes()
    if args.select:
        select(data, steps, seeds=1 if args.quick else 3)
        return
    repeats = args.repeats or (1 if args.quick else 5)
    warmup = 0 if args.quick else 1
    configs = {"chosen": CHOSEN} if args.quick else CONFIGS
    ridge = bayesian_ridge_nll(data)
    missing = {"skipped": _vbll_missing} if vbll is None else {}
    peers = {"mlp": MLPModel, **({"vbll": PeerModel} if vbll is not None else {})}
    for label, s in configs.items() if "homoscedastic" in args.parts else ():
        # the refits run at the setting chosen for them on the validation split (CHOSEN)
        refits = REFITS if label == "chosen" else {}
        times, nll = _compare(data, {"vitorch": VitorchModel, **refits, **peers}, s, steps, repeats, warmup)
        common = {"steps": steps, "batch": 32, "settings": asdict(s), "bayesian_ridge_nll": ridge}
        common["clock"] = clock_name()
        case = f"diabetes_{steps}_steps_{label}"
        # one pair of lines per vitorch recipe: end to end, and each post hoc refit after it
        for recipe in ("vitorch", *refits):
            name = case + recipe.removeprefix("vitorch")
            report(
                "vbll", name, times[recipe], "vbll", times.get("vbll"), vitorch_nll=nll[recipe],
                peer_nll=nll.get("vbll"), **common, **missing,
            )  # fmt: skip
            report("vbll", name, times[recipe], "gaussian_mlp_head", times["mlp"], vitorch_nll=nll[recipe],
                   peer_nll=nll["mlp"], **common)  # fmt: skip
    if "heteroscedastic" in args.parts:
        heteroscedastic(data, steps, repeats, warmup, ridge, quick=args.quick)
    if "compiled" in args.parts and not args.quick:
        compiled(data, steps, repeats, warmup, ridge)


def compiled(data, steps: int, repeats: int, warmup: int, ridge: float) -> None:
    """vitorch's ``compile_step`` (compiled forward and backward, fused ``AdamW``) against each peer.

    For the homoscedastic head at :data:`CHOSEN` and the validation-chosen heteroscedastic
    head (dense ``q(U)``) at :data:`CHOSEN_HETEROSCEDASTIC`, timed together in one loop:
    vitorch compiled and eager (torch's default ``AdamW``), the ``vbll`` package eager with
    torch's default and fused ``AdamW``, and the MLP head compiled.  Each line names how both
    sides ran (``vitorch_mode``, ``peer_mode``).  The ``vbll`` package is not compiled: its
    layers break Dynamo's graph, and the pieces fail in AOTAutograd with torch 2.13 (a
    ``RuntimeError`` from the alias handling of a graph output; reported as skipped).
    """
    if vbll is None:
        report("vbll", "compiled", None, "vbll", None, skipped=_vbll_missing)
        return
    modes = {
        "eager": "eager, torch's default AdamW",
        "fused": "eager, torch's fused AdamW",
        "compiled": "compile_step: compiled forward and backward, torch's fused AdamW",
    }
    common = {"steps": steps, "batch": 32, "bayesian_ridge_nll": ridge, "clock": clock_name()}
    for label, s, mine, peer in (
        ("chosen", CHOSEN, VitorchModel, PeerModel),
        ("heteroscedastic_dense_chosen", CHOSEN_HETEROSCEDASTIC, HeteroscedasticDenseModel, PeerHeteroscedasticModel),
    ):
        fused, comp = replace(s, optimizer="fused"), replace(s, optimizer="fused", compiled=True)
        models = {
            "vitorch compiled": (mine, comp),
            "vitorch eager": (mine, s),
            "vbll eager": (peer, s),
            "vbll fused": (peer, fused),
            "mlp compiled": (MLPModel, comp),
        }
        times, nll = _compare(data, models, s, steps, repeats, warmup)
        extra = {**common, "settings": asdict(s), "vitorch_mode": modes["compiled"]}
        extra["compile_speedup"] = times["vitorch eager"] / times["vitorch compiled"]
        case = f"diabetes_{steps}_steps_{label}_compile_step"
        for name, peer_name, mode in (
            ("vbll eager", "vbll", "eager"),
            ("vbll fused", "vbll", "fused"),
            ("mlp compiled", "gaussian_mlp_head", "compiled"),
        ):
            report("vbll", f"{case} vs {mode}", times["vitorch compiled"], peer_name, times[name],
                   peer_mode=modes[mode], vitorch_nll=nll["vitorch compiled"], peer_nll=nll[name], **extra)  # fmt: skip
        reason = "torch.compile of the vbll package fails in AOTAutograd (torch 2.13): RuntimeError, invalid view shape"
        report("vbll", f"{case} vs compiled", times["vitorch compiled"], "vbll", None, skipped=reason)


def heteroscedastic(data, steps: int, repeats: int, warmup: int, ridge: float, quick: bool = False) -> None:
    """The heteroscedastic heads: vitorch's against vbll's ``HetRegression`` and the MLP head.

    vitorch's head with a dense ``q(U)`` is the configuration that the ``vbll`` package's
    ``HetRegression`` (parameterization "dense") also has; vitorch's default (diagonal
    ``q(U)``) is timed in the same loop.  Both VBLL heads are scored by the same
    Gauss-Hermite predictive NLL (:func:`gauss_hermite_nll`); vbll's own sampled score is
    reported beside it.  First at vitorch's validation-chosen decay
    (:data:`CHOSEN_HETEROSCEDASTIC`; the line of :data:`VALIDATION_CHOICE` carries
    ``headline``); in the full run also with torch's fused ``AdamW`` on every side
    (``vitorch.fit``'s default optimizer), and at the decay that validation picks for
    vbll's head (:data:`PEER_CHOSEN_HETEROSCEDASTIC`), so that the peer is also scored at
    its best.
    """
    common = {"steps": steps, "batch": 32, "bayesian_ridge_nll": ridge, "clock": clock_name()}
    missing = {"skipped": _vbll_missing} if vbll is None else {}
    peer = {"vbll": PeerHeteroscedasticModel} if vbll is not None else {}
    dense, diag = "vitorch_heteroscedastic_dense", "vitorch_heteroscedastic"
    settings = {"chosen": CHOSEN_HETEROSCEDASTIC}
    if not quick:
        # vitorch.fit's default optimizer is torch's fused Adam(W): that row too, fused on every side
        settings |= {"chosen_fused": replace(CHOSEN_HETEROSCEDASTIC, optimizer="fused")}
        settings |= {"peer_chosen": PEER_CHOSEN_HETEROSCEDASTIC}
    for label, s in settings.items():
        models = {dense: HeteroscedasticDenseModel, **peer}
        if label != "peer_chosen":
            models |= {"mlp": MLPModel}
        if label == "chosen":
            models |= {diag: HeteroscedasticModel}
        times, nll = _compare(data, models, s, steps, repeats, warmup)
        for recipe in (r for r in (dense, diag) if r in models):
            name = f"diabetes_{steps}_steps_{recipe.removeprefix('vitorch_')}_{label}"
            head = (
                {"headline": "validation-chosen recipe (NLL target)"}
                if (recipe, label) == (VALIDATION_CHOICE, "chosen")
                else {}
            )
            extra = {**head, **common, "settings": asdict(s)}
            # the peer is the vbll package; which of its heads, and how the configurations match
            peer_head = "HetRegression, dense q(W), q(M)" + ("" if recipe == dense else " (vitorch: diagonal q(U))")
            report("vbll", name, times[recipe], "vbll", times.get("vbll"), peer_head=peer_head,
                   vitorch_nll=nll[recipe], peer_nll=nll.get("vbll"), peer_nll_vbll_sampled=nll.get("vbll_sampled"),
                   **extra, **missing)  # fmt: skip
            if "mlp" in times:
                report("vbll", name, times[recipe], "gaussian_mlp_head", times["mlp"], vitorch_nll=nll[recipe],
                       peer_nll=nll["mlp"], **extra)  # fmt: skip


if __name__ == "__main__":
    main()
