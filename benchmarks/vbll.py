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
import os
import statistics
import sys
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from _harness import clock_name, interleaved_medians, parser, report, setup, try_import

# This file is itself named vbll.py: drop its folder from the path before importing the peer.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
vbll, _vbll_missing = try_import("vbll")
if vbll is not None:
    import vbll.layers.regression  # noqa: F401  (the submodule holding Regression)

from vitorch.models.last_layer import (  # noqa: E402
    Dense,
    VBLLHeteroscedasticRegression,
    VBLLModel,
    VBLLRegression,
    VBLLStudentTRegression,
)

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
# The heteroscedastic heads' best decay on the same validation split (``--select``).
CHOSEN_HETEROSCEDASTIC = Settings(weight_decay=10.0)
# The decay that the same validation split picks for the vbll package's HetRegression.
PEER_CHOSEN_HETEROSCEDASTIC = Settings(weight_decay=3.0)
# The recipe with the lowest validation NLL of all in ``--select``: the NLL target's headline.
VALIDATION_CHOICE = "vitorch_heteroscedastic_dense"
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


class VitorchModel(VBLLModel):
    def __init__(self, d_in, n, s: Settings):
        head = VBLLRegression(
            WIDTH, 1, prior_scale=s.prior_var**0.5, noise_variance=1.0, wishart_scale=s.wishart_scale,
            wishart_dof=WISHART_DOF,
        )  # fmt: skip
        super().__init__(features(d_in), head, num_data=n)

    def loss(self, x, y):
        # the head's LossOutput, as forward((x, y)) returns it, without nn.Module's call overhead
        return self.head.loss(self.features(x), y, self.num_data).loss

    def nll(self, x, y):
        # the posterior predictive N(m^T phi, phi^T S phi + sigma^2), per datum
        return float(-self.predict(x).predictive.log_prob(y).mean())


class VitorchRefitModel(VitorchModel):
    """End-to-end training, then a closed-form refit of the head at the evidence maximum.

    After the last step the head is refit on the trained features of the whole
    training split by ``solve_posterior(phi, y, tune=True)``: prior scale and noise
    variance by type-II maximum likelihood (MacKay's fixed point), then the exact
    posterior.  The refit (float64: one 64 x 64 eigendecomposition, the fixed point, one
    Cholesky factorization) is inside the timed run.
    """

    tune = True

    def finish(self, x, y):
        self.head.double()
        self.solve_posterior(x, y, tune=self.tune)

    def nll(self, x, y):
        return float(-self.head(self.features(x).double()).predictive.log_prob(y.double()).mean())


class VitorchELBORefitModel(VitorchRefitModel):
    """The same refit at the training prior: ``solve_posterior(phi, y)``, the ELBO's closed-form optimum.

    The exact posterior alternated with the noise's closed-form update (inverse-Wishart
    prior included) until the noise settles: the optimum of the objective that the
    minibatch steps were climbing, on the final features.
    """

    tune = False


class StudentTModel(VitorchModel):
    """vitorch's Student-t head end to end (normal-gamma posterior, prior ``Gamma(1, 1)``; generic path)."""

    def __init__(self, d_in, n, s: Settings):
        VBLLModel.__init__(self, features(d_in), VBLLStudentTRegression(WIDTH, 1, prior_scale=s.prior_var**0.5), n)


class StudentTRefitModel(VitorchRefitModel):
    """Gaussian head end to end, then the exact normal-gamma posterior on the trained features (``solve_posterior``)."""

    def finish(self, x, y):
        self.head = VBLLStudentTRegression(WIDTH, 1, prior_scale=self.head.prior_scale).double()
        self.solve_posterior(x, y)


# The log-variance weights' prior variance per weight (vitorch: noise_prior_scale**2).
NOISE_PRIOR_VAR = 0.01
GH_NODES = 64  # Gauss-Hermite nodes of the shared score (16 nodes agree with 64 to 1e-12 here)


def gauss_hermite_nll(y, mean, add_var, mul_var, mu, t) -> float:
    """Mean NLL of ``p(y) = E_{l ~ N(mu, t)} N(y | mean, add_var + mul_var e^l)``, float64, all ``[N]``.

    Both heteroscedastic heads have a predictive of this form (vitorch: ``add_var =
    phi^T S phi``, ``mul_var = 1``; vbll: ``add_var = 0``, ``mul_var = 1 + phi^T S phi``),
    so one exact quadrature scores both.
    """
    x, w = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.hermite.hermgauss(GH_NODES))
    y, mean, add_var, mul_var, mu, t = (a.double()[:, None] for a in (y, mean, add_var, mul_var, mu, t))
    var = add_var + mul_var * torch.exp(mu + (2 * t).sqrt() * x)  # [N, J]
    log_n = -0.5 * ((y - mean).pow(2) / var + var.log() + LOG_2PI)
    return float(-torch.logsumexp(log_n + (w / math.sqrt(math.pi)).log(), -1).mean())


class HeteroscedasticModel(VBLLModel):
    """vitorch's heteroscedastic head: Bayesian linear log-variance with a learned offset.

    ``noise_covariance`` is its default ``Diagonal`` ``q(U)``; the subclass below uses
    ``Dense``, the configuration the ``vbll`` package's ``HetRegression`` also has.
    """

    noise_covariance = None

    def __init__(self, d_in, n, s: Settings):
        kw = {"noise_covariance": self.noise_covariance} if self.noise_covariance else {}
        head = VBLLHeteroscedasticRegression(
            WIDTH, 1, prior_scale=s.prior_var**0.5, noise_prior_scale=NOISE_PRIOR_VAR**0.5, **kw
        )
        super().__init__(features(d_in), head, num_data=n)

    def loss(self, x, y):
        return self.head.loss(self.features(x), y, self.num_data).loss

    def nll(self, x, y):
        phi = self.features(x)
        mu, t = self.head.log_variance_moments(phi)
        mean, quad = phi @ self.head.weights.mean.mT, self.head.weights.quad(phi)
        return gauss_hermite_nll(y, mean[:, 0], quad[:, 0], torch.ones_like(y), mu[:, 0], t[:, 0])


class HeteroscedasticDenseModel(HeteroscedasticModel):
    noise_covariance = Dense


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


class PeerHeteroscedasticModel(nn.Module):
    """The ``vbll`` package's ``HetRegression`` (dense ``q(W)`` and ``q(M)``), mapped onto vitorch's settings.

    vbll divides both prior "scales" by ``in_features`` and means variances by them, so
    ``prior_scale = prior_var * D`` and ``noise_prior_scale = NOISE_PRIOR_VAR * D`` give
    the same per-weight prior variances as vitorch's head.  Its model differs: the
    weights' covariance is scaled by each datum's noise (``w | sigma^2 ~ N(m, sigma^2 S)``,
    the normal-inverse-gamma form), so the predictive is ``N(m^T phi, (1 + phi^T S phi)
    sigma^2(phi))``, and its log-variance ``M phi`` has no offset.
    """

    def __init__(self, d_in, n, s: Settings):
        super().__init__()
        self.features = features(d_in)
        self.head = vbll.HetRegression(
            WIDTH, 1, regularization_weight=1.0 / n, parameterization="dense", prior_scale=s.prior_var * WIDTH,
            noise_prior_scale=NOISE_PRIOR_VAR * WIDTH,
        )  # fmt: skip
        # Start where vitorch's head starts (q(W), q(M) at their priors, zero means) rather
        # than from vbll's random means.
        with torch.no_grad():
            for name in ("W_mean", "M_mean", "W_offdiag", "M_offdiag"):
                getattr(self.head, name).zero_()
            self.head.W_logdiag.fill_(0.5 * math.log(s.prior_var))
            self.head.M_logdiag.fill_(0.5 * math.log(NOISE_PRIOR_VAR))

    def loss(self, x, y):
        return self.head(self.features(x)).train_loss_fn(y[:, None])

    def nll(self, x, y):
        # the same exact quadrature as vitorch's head; vbll's own score (20 noise draws) beside it
        phi = self.features(x)
        log_var = self.head.log_noise(phi, self.head.M)
        quad = self.head.W.covariance_weighted_inner_prod(phi.unsqueeze(-2)[..., None])
        mean = phi @ self.head.W_mean.mT
        self.sampled_nll = float(self.head(phi).val_loss_fn(y[:, None]))
        return gauss_hermite_nll(y, mean[:, 0], torch.zeros_like(y), 1 + quad[:, 0], log_var.mean[:, 0],
                                 log_var.scale[:, 0] ** 2)  # fmt: skip


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


def train(model_cls, data, steps: int, batch: int, seed: int, s: Settings, keep: list | None = None) -> float:
    """Train ``steps`` minibatch steps from a seeded start; return the held-out NLL per datum.

    ``keep`` collects a model's second score (``sampled_nll``) when it has one.
    """
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
        nll = model.nll(x_te, y_te)
    if keep is not None and hasattr(model, "sampled_nll"):
        keep.append(model.sampled_nll)
    return nll


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


# Every vitorch recipe that --select scores, over the decays of the feature network at the
# prior variance 1/64 (the end-to-end Gaussian head also over the prior grid below).
RECIPES = {
    **REFITS,
    "vitorch_student_t": StudentTModel,
    "vitorch_refit_student_t": StudentTRefitModel,
    "vitorch_heteroscedastic": HeteroscedasticModel,
    "vitorch_heteroscedastic_dense": HeteroscedasticDenseModel,
}


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
    """Median times (interleaved) and NLL spreads of ``models`` trained at ``s``; seed = run index."""
    nlls: dict[str, list[float]] = {name: [] for name in models}
    sampled: list[float] = []  # vbll's own HetRegression score, by its 20 noise draws

    def runner(name, cls):
        def run():
            model_nll = train(cls, data, steps, 32, len(nlls[name]), s, keep=sampled)
            nlls[name].append(model_nll)

        return run

    for cls in models.values():  # pay one-time costs (first calls, lazy imports) untimed
        train(cls, data, 5, 32, 0, s)
    times = interleaved_medians({n: runner(n, c) for n, c in models.items()}, repeats=repeats, warmup=warmup)
    nll = {k: _spread(v) for k, v in nlls.items()}
    if sampled:
        nll["vbll_sampled"] = _spread(sampled)
    return times, nll


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (1000; 100 with --quick)")
    p.add_argument("--select", action="store_true", help="score every recipe's settings on a validation split")
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
    for label, s in configs.items():
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
    heteroscedastic(data, steps, repeats, warmup, ridge, quick=args.quick)


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
