"""The VBLL benchmark's data, settings, models and training loop (`vbll.py` runs the comparisons).

Diabetes (scikit-learn, 442 x 10) standardized with training-split statistics; a
``10 -> 64 -> 64`` ELU feature network shared by every head; vitorch's heads as
`vitorch.models.last_layer.VBLLModel`, the ``vbll`` package's ``Regression`` and
``HetRegression`` mapped onto the same priors and initial head, and a plain Gaussian MLP
head; one optimizer rule (`make_optimizer`) and one training loop (`train`) for all.
`vbll.py`'s docstring describes the settings and the mapping between the libraries.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from _harness import try_import

# The runner is named vbll.py: drop the benchmarks folder from the path before importing the peer.
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
from vitorch.training.compile import compile_step  # noqa: E402

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
    compiled: bool = False  # train through vitorch's compile_step (compiled forward and backward)


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
    fullgraph = False  # the vbll package's layers break Dynamo's graph

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

    fullgraph = False  # as PeerModel

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
    if s.compiled:
        # the same step, its forward and backward compiled (the compiled code is reused by
        # every later model of the same class, so only the first run pays for compiling)
        step = compile_step(_Loss(model), opt, fullgraph=getattr(model, "fullgraph", True))
        for t in range(steps):
            step((x_tr[idx[t]], y_tr[idx[t]]))
    else:
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


class _Loss(nn.Module):
    """``model.loss(x, y)`` as a forward of the batch ``(x, y)``: the form `compile_step` trains."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(*batch)


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
