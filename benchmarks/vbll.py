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
(``fit(phi, y, tune=True)``: prior scale and noise variance by type-II maximum
likelihood, then the exact posterior) or at the training prior (``fit(phi, y)``, the
ELBO's closed-form optimum).

``--select`` instead trains on 80% of the training split and scores the other 20%
(the test split is not touched) for a small grid of settings (prior variance,
inverse-Wishart scale, decoupled weight decay of the feature network), three seeds
each, with vitorch's head, the feature network's decay for each refit recipe and for
vitorch's heteroscedastic head; :data:`CHOSEN` holds the setting picked there, and
the comparison gives every model that same setting.  The full run ends with the heteroscedastic head at its own
chosen setting (:data:`CHOSEN_HETEROSCEDASTIC`) against the MLP head: the ``vbll``
package has no such head, so there is no peer time for it.

    python benchmarks/vbll.py [--quick] [--threads 1] [--repeats R] [--select]

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import sys
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from _harness import clock_name, interleaved_medians, parser, report, setup, try_import

# This file is itself named vbll.py: drop its folder from the path before importing the peer.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
vbll, _vbll_missing = try_import("vbll")
if vbll is not None:
    import vbll.layers.regression  # noqa: F401  (the submodule holding Regression)

from vitorch.models.last_layer import VBLLHeteroscedasticRegression, VBLLRegression  # noqa: E402

WIDTH = 64
WISHART_DOF = 1.0
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Settings:
    """One training configuration, shared by every model of a comparison."""

    prior_var: float = 1.0 / WIDTH  # per weight; the vbll package's default (prior_scale=1)
    wishart_scale: float = 1e-2  # the vbll package's default
    weight_decay: float = 0.0  # AdamW-style decoupled decay of the feature network only
    lr: float = 1e-3
    optimizer: str = "default"  # "default" (torch's Adam) or "fused" (Adam(fused=True))


# Picked by ``--select`` on the validation split (docs/vbll.md has the table): the
# lowest validation NLL of the grid.  A decay this strong holds the feature network
# near small weights, where it is close to linear.
CHOSEN = Settings(prior_var=1.0 / WIDTH, wishart_scale=1e-2, weight_decay=30.0)
# The heteroscedastic head's best decay on the same validation split (``--select``).
CHOSEN_HETEROSCEDASTIC = Settings(weight_decay=10.0)
DECAYS = [0.0, 1e-1, 1.0, 3.0, 10.0, 30.0, 100.0]
# The comparison runs the package defaults (no decay, Adam) and the chosen setting with
# torch's default and fused Adam(W) implementations.
CONFIGS = {
    "defaults": Settings(),
    "chosen": CHOSEN,
    "chosen_fused": replace(CHOSEN, optimizer="fused"),
}


def load_diabetes(seed: int = 0):
    """Standardized ``(x_train [353, 10], y_train [353], x_test [89, 10], y_test [89])``."""
    from sklearn.datasets import load_diabetes as load

    x, y = load(return_X_y=True)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_train = int(0.8 * len(y))
    return _standardize(x[perm[:n_train]], y[perm[:n_train]], x[perm[n_train:]], y[perm[n_train:]])


def _standardize(x_tr, y_tr, x_te, y_te):
    # training-split statistics only, so the held-out part stays unseen
    mx, sx, my, sy = x_tr.mean(0), x_tr.std(0), y_tr.mean(), y_tr.std()
    return (x_tr - mx) / sx, (y_tr - my) / sy, (x_te - mx) / sx, (y_te - my) / sy


def validation_split(data, seed: int = 0):
    """Carve a validation set (20%) out of the training split; the test split is dropped."""
    x_tr, y_tr, _, _ = data
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed + 100))
    n_fit = int(0.8 * len(y_tr))
    fit, val = perm[:n_fit], perm[n_fit:]
    return _standardize(x_tr[fit], y_tr[fit], x_tr[val], y_tr[val])


def features(d_in: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, WIDTH), nn.ELU(), nn.Linear(WIDTH, WIDTH), nn.ELU())


class VitorchModel(nn.Module):
    def __init__(self, d_in, n, s: Settings):
        super().__init__()
        self.features, self.n = features(d_in), n
        self.head = VBLLRegression(
            WIDTH, 1, prior_scale=s.prior_var**0.5, noise_variance=1.0, wishart_scale=s.wishart_scale,
            wishart_dof=WISHART_DOF,
        )  # fmt: skip

    def loss(self, x, y):
        return self.head.loss(self.features(x), y, self.n)

    def nll(self, x, y):
        # the posterior predictive N(m^T phi, phi^T S phi + sigma^2), per datum
        return float(-self.head(self.features(x)).predictive.log_prob(y).mean())


class VitorchRefitModel(VitorchModel):
    """End-to-end training, then a closed-form refit of the head at the evidence maximum.

    After the last step the head is refit on the trained features of the whole
    training split by ``fit(phi, y, tune=True)``: prior scale and noise variance by
    type-II maximum likelihood (MacKay's fixed point), then the exact posterior.  The
    refit (float64: one 64 x 64 eigendecomposition, the fixed point, one Cholesky
    factorization) is inside the timed run.
    """

    tune = True

    def finish(self, x, y):
        with torch.no_grad():
            self.head.double().fit(self.features(x).double(), y.double(), tune=self.tune)

    def nll(self, x, y):
        return float(-self.head(self.features(x).double()).predictive.log_prob(y.double()).mean())


class VitorchELBORefitModel(VitorchRefitModel):
    """The same refit at the training prior: ``fit(phi, y)``, the ELBO's closed-form optimum.

    The exact posterior alternated with the noise's closed-form update (inverse-Wishart
    prior included) until the noise settles: the optimum of the objective that the
    minibatch steps were climbing, on the final features.
    """

    tune = False


class HeteroscedasticModel(nn.Module):
    """vitorch's heteroscedastic VBLL head (a Bayesian linear log-variance); no ``vbll`` counterpart."""

    def __init__(self, d_in, n, s: Settings):
        super().__init__()
        self.features, self.n = features(d_in), n
        self.head = VBLLHeteroscedasticRegression(WIDTH, 1, prior_scale=s.prior_var**0.5, noise_prior_scale=0.1)

    def loss(self, x, y):
        return self.head.loss(self.features(x), y, self.n)

    def nll(self, x, y):
        # Gauss-Hermite mixture over the log-variance, per datum
        return float(-self.head(self.features(x)).predictive.log_prob(y).mean())


class PeerModel(nn.Module):
    def __init__(self, d_in, n, s: Settings):
        super().__init__()
        self.features = features(d_in)
        # vbll's prior variance is prior_scale / in_features
        self.head = vbll.layers.regression.Regression(
            WIDTH, 1, regularization_weight=1.0 / n, parameterization="dense", prior_scale=s.prior_var * WIDTH,
            wishart_scale=s.wishart_scale, dof=WISHART_DOF,
        )  # fmt: skip
        # Start from vitorch's initial head (q = prior with zero mean, noise variance 1)
        # rather than vbll's random one, so that both runs begin from the same point.
        with torch.no_grad():
            self.head.W_mean.zero_()
            self.head.W_logdiag.fill_(0.5 * math.log(s.prior_var))
            self.head.W_offdiag.zero_()
            self.head.noise_logdiag.zero_()

    def loss(self, x, y):
        return self.head(self.features(x)).train_loss_fn(y[:, None])

    def nll(self, x, y):
        # vbll's own predictive: N(W phi, phi^T S phi + sigma^2), per datum
        return float(self.head(self.features(x)).val_loss_fn(y[:, None]))


class MLPModel(nn.Module):
    """Deterministic Gaussian head: mean and log-variance, trained by Gaussian NLL."""

    def __init__(self, d_in, n, s: Settings):
        super().__init__()
        self.features, self.head = features(d_in), nn.Linear(WIDTH, 2)

    def _moments(self, x):
        mean, log_var = self.head(self.features(x)).unbind(-1)
        return mean, log_var

    def loss(self, x, y):
        mean, log_var = self._moments(x)
        return 0.5 * ((y - mean).pow(2) / log_var.exp() + log_var + LOG_2PI).mean()

    def nll(self, x, y):
        return float(self.loss(x, y))


# vitorch's post hoc refits, each scored on the validation split over the decays
REFITS = {"vitorch_refit_tuned": VitorchRefitModel, "vitorch_refit_elbo": VitorchELBORefitModel}


def make_optimizer(model: nn.Module, s: Settings) -> torch.optim.Optimizer:
    """The same optimizer for every model: Adam, decoupled weight decay on the feature network only.

    The head is left undecayed: a VBLL head's weights are regularized by its KL term.
    With ``weight_decay = 0`` this is exactly ``torch.optim.Adam(lr=...)``.
    """
    groups = [
        {"params": list(model.features.parameters()), "weight_decay": s.weight_decay},
        {"params": list(model.head.parameters()), "weight_decay": 0.0},
    ]
    kw = {"fused": True} if s.optimizer == "fused" else {}
    return torch.optim.AdamW(groups, lr=s.lr, **kw) if s.weight_decay else torch.optim.Adam(groups, lr=s.lr, **kw)


def train(model_cls, data, steps: int, batch: int, seed: int, s: Settings) -> float:
    """Train ``steps`` minibatch steps from a seeded start; return the held-out NLL per datum."""
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = model_cls(x_tr.shape[1], len(y_tr), s)
    # identical feature-network initialization and minibatch order for every head
    model.features.load_state_dict(features_init(x_tr.shape[1], seed).state_dict())
    opt = make_optimizer(model, s)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(y_tr), (steps, batch), generator=g)
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        model.loss(x_tr[idx[t]], y_tr[idx[t]]).backward()
        opt.step()
    if hasattr(model, "finish"):  # a post hoc step after training (timed with it)
        model.finish(x_tr, y_tr)
    with torch.no_grad():
        return model.nll(x_te, y_te)


def features_init(d_in, seed):
    torch.manual_seed(seed + 1)
    return features(d_in)


def bayesian_ridge_nll(data) -> float:
    from sklearn.linear_model import BayesianRidge

    x_tr, y_tr, x_te, y_te = (t.double().numpy() for t in data)
    mean, std = BayesianRidge().fit(x_tr, y_tr).predict(x_te, return_std=True)
    mean, std = torch.as_tensor(mean), torch.as_tensor(std)
    return float(-torch.distributions.Normal(mean, std).log_prob(torch.as_tensor(y_te)).mean())


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def select(data, steps: int, seeds: int) -> None:
    """Score a grid of settings on a validation split carved from the training split."""
    val = validation_split(data)
    print(f"# validation: fit on {len(val[1])}, score on {len(val[3])}; BayesianRidge {bayesian_ridge_nll(val):.4f}")
    # A first pass over [1/64, 1] x [1e-2, 1e-1, 1] x [0, 0.1, 1] found the scale of the
    # noise prior immaterial (N = 282 data outweigh it) and the best weight decay at the
    # grid's edge; the grid was widened in decay (twice) and prior variance until the
    # validation NLL turned up again on both sides.
    grid = itertools.product([1.0 / WIDTH, 1.0, 10.0], [1e-2, 1.0], DECAYS)
    # vitorch alone picks the setting (the peer then gets the same); the peer is slower and
    # optimizes the same objective from the same start (the test run shows both).  The
    # heteroscedastic head (no inverse-Wishart prior) is scored over the decays at the
    # homoscedastic head's best prior variance.
    rows = [("vitorch", VitorchModel, Settings(prior_var=p, wishart_scale=w, weight_decay=d)) for p, w, d in grid]
    rows += [(name, cls, Settings(weight_decay=d)) for name, cls in REFITS.items() for d in DECAYS]
    rows += [("vitorch_heteroscedastic", HeteroscedasticModel, Settings(weight_decay=d)) for d in DECAYS]
    for name, cls, s in rows:
        line = {"head": name, **{k: v for k, v in asdict(s).items() if k != "optimizer"}}
        try:
            line["val_nll"] = _spread([train(cls, val, steps, 32, seed, s) for seed in range(seeds)])["median"]
        except ValueError as err:  # a refit whose evidence has no finite maximizer
            line["val_nll"], line["error"] = float("nan"), str(err)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}, flush=True)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (1000; 100 with --quick)")
    p.add_argument("--select", action="store_true", help="score the settings grid on a validation split")
    args = p.parse_args()
    setup(args)
    steps = args.steps or (100 if args.quick else 1000)
    data = load_diabetes()
    if args.select:
        select(data, steps, seeds=1 if args.quick else 3)
        return
    repeats = args.repeats or (1 if args.quick else 5)
    configs = {"chosen": CHOSEN} if args.quick else CONFIGS
    ridge = bayesian_ridge_nll(data)
    peers = {"mlp": MLPModel, **({"vbll": PeerModel} if vbll is not None else {})}
    for label, s in configs.items():
        # the refits run at the setting chosen for them on the validation split (CHOSEN)
        refits = REFITS if label == "chosen" else {}
        models = {"vitorch": VitorchModel, **refits, **peers}
        nlls: dict[str, list[float]] = {name: [] for name in models}

        def runner(name, cls, s=s, nlls=nlls):
            def run():
                nlls[name].append(train(cls, data, steps, 32, len(nlls[name]), s))

            return run

        for cls in models.values():  # pay one-time costs (first calls, lazy imports) untimed
            train(cls, data, 5, 32, 0, s)
        fns = {name: runner(name, cls) for name, cls in models.items()}
        times = interleaved_medians(fns, repeats=repeats, warmup=0 if args.quick else 1)
        nll = {k: _spread(v) for k, v in nlls.items()}
        common = {
            "steps": steps,
            "batch": 32,
            "settings": asdict(s),
            "bayesian_ridge_nll": ridge,
            "clock": clock_name(),
        }
        case = f"diabetes_{steps}_steps_{label}"
        missing = {"skipped": _vbll_missing} if vbll is None else {}
        # one pair of lines per vitorch recipe: end to end, and each post hoc refit after it
        for recipe in ("vitorch", *refits):
            name = case + recipe.removeprefix("vitorch")
            report(
                "vbll", name, times[recipe], "vbll", times.get("vbll"), vitorch_nll=nll[recipe],
                peer_nll=nll.get("vbll"), **common, **missing,
            )  # fmt: skip
            report("vbll", name, times[recipe], "gaussian_mlp_head", times["mlp"], vitorch_nll=nll[recipe],
                   peer_nll=nll["mlp"], **common)  # fmt: skip
    if not args.quick:
        heteroscedastic(data, steps, repeats, ridge)


def heteroscedastic(data, steps: int, repeats: int, ridge: float) -> None:
    """vitorch's heteroscedastic head at its chosen setting, timed against the MLP head with the same one."""
    s = CHOSEN_HETEROSCEDASTIC
    models = {"vitorch_heteroscedastic": HeteroscedasticModel, "mlp": MLPModel}
    nlls: dict[str, list[float]] = {name: [] for name in models}

    def runner(name, cls):
        def run():
            nlls[name].append(train(cls, data, steps, 32, len(nlls[name]), s))

        return run

    for cls in models.values():
        train(cls, data, 5, 32, 0, s)
    times = interleaved_medians({name: runner(name, cls) for name, cls in models.items()}, repeats=repeats, warmup=1)
    nll = {k: _spread(v) for k, v in nlls.items()}
    common = {"steps": steps, "batch": 32, "settings": asdict(s), "bayesian_ridge_nll": ridge, "clock": clock_name()}
    report("vbll", f"diabetes_{steps}_steps_heteroscedastic_chosen", times["vitorch_heteroscedastic"],
           "gaussian_mlp_head", times["mlp"], vitorch_nll=nll["vitorch_heteroscedastic"], peer_nll=nll["mlp"],
           **common)  # fmt: skip


if __name__ == "__main__":
    main()
