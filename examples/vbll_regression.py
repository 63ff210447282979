"""Variational Bayesian last layers for regression: a heteroscedastic toy, diabetes, and sampled vs deterministic.

1. A 1-D toy with input-dependent noise, ``y = x sin(x) + (0.1 + 0.3 |x|) eps`` on
   ``x in [-4, 4]`` with a gap in ``[-1, 1]``.  A small network is trained end to end
   with a homoscedastic VBLL head and with a heteroscedastic one; ``toy_band.png``
   shows both predictive bands (mean +- 2 sd) out to ``|x| = 6``.
2. scikit-learn's diabetes set (442 x 10, standardized; 80/20 splits): a VBLL
   head, and the same head refit after training at the evidence maximum
   (``solve_posterior(x, y, tune=True)`` on the trained features), against a deterministic
   network (MSE, noise variance from the training residuals), a deep ensemble of five
   Gaussian networks (Lakshminarayanan et al., 2017) and ``BayesianRidge``.  Test NLL
   and RMSE are per standardized target.
3. On the trained diabetes features (frozen, noise fixed), the deterministic VBLL
   ELBO against the Monte Carlo ELBO (K = 1, reparameterized; K = 8, sticking the landing) through
   :func:`vitorch.loss`, all from the same start; ``objectives.png`` shows the
   ELBO per step against the exact log evidence, their common ceiling.

Every model, VBLL or not, trains through :func:`vitorch.fit`: a VBLL model is a
:class:`~vitorch.models.last_layer.VBLLModel` (features and head; ``model((x, y))`` returns
the :class:`vitorch.LossOutput`), a baseline a module whose forward returns its scalar loss.

    python examples/vbll_regression.py [--quick] [--out outputs/vbll_regression]

The last line of output is a JSON object of headline metrics.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import statistics
import time

import torch
from torch import nn

import vitorch as vt
from vitorch.models.last_layer import (
    BayesianLinearRegression,
    VBLLHeteroscedasticRegression,
    VBLLModel,
    VBLLRegression,
    metrics,
)

LOG_2PI = math.log(2 * math.pi)
WIDTH = 64


def mlp(d_in: int, out: int | None = None) -> nn.Sequential:
    layers = [nn.Linear(d_in, WIDTH), nn.ELU(), nn.Linear(WIDTH, WIDTH), nn.ELU()]
    return nn.Sequential(*layers, *([nn.Linear(WIDTH, out)] if out else []))


def train(model, x, y, steps, batch=32, lr=1e-3, seed=0, callbacks=()):
    """``steps`` Adam steps on shuffled minibatches of ``(x, y)`` by :func:`vitorch.fit`."""
    vt.fit(model, (x, y), steps=steps, batch_size=min(batch, len(y)), lr=lr, seed=seed, progress=False,
           callbacks=callbacks)  # fmt: skip


class GaussianNet(nn.Module):
    """A network with mean and log-variance outputs: ``forward((x, y))`` is the Gaussian NLL per datum."""

    def __init__(self, d_in):
        super().__init__()
        self.net = mlp(d_in, 2)

    def forward(self, batch):
        x, y = batch
        mean, log_var = self.net(x).unbind(-1)
        return 0.5 * ((y - mean).pow(2) / log_var.exp() + log_var + LOG_2PI).mean()

    def predict(self, x):
        mean, log_var = self.net(x).unbind(-1)
        return torch.distributions.Normal(mean, (0.5 * log_var).exp())


class MSENet(nn.Module):
    """A deterministic network: ``forward((x, y))`` is the mean squared error."""

    def __init__(self, d_in):
        super().__init__()
        self.net = mlp(d_in, 1)

    def forward(self, batch):
        x, y = batch
        return (self.net(x).squeeze(-1) - y).pow(2).mean()


# ----- 1. heteroscedastic toy


def toy_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.rand(n // 2, generator=g) * 3 - 4, torch.rand(n - n // 2, generator=g) * 3 + 1])
    y = x * torch.sin(x) + (0.1 + 0.3 * x.abs()) * torch.randn(n, generator=g)
    return x[:, None], y


def toy(out_dir, steps, suffix=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = toy_data(400, seed=0)
    grid = torch.linspace(-6, 6, 300)[:, None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    result = {}
    heads = {
        "homoscedastic": VBLLRegression(WIDTH, prior_scale=1.0, noise_variance=1.0),
        "heteroscedastic": VBLLHeteroscedasticRegression(WIDTH, prior_scale=1.0, noise_prior_scale=0.3),
    }
    for ax, (name, head) in zip(axes, heads.items()):
        torch.manual_seed(0)
        features = nn.Sequential(nn.Linear(1, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh())
        model = VBLLModel(features, head, num_data=len(y))
        train(model, x, y, steps, batch=64, lr=3e-3)
        with torch.no_grad():
            pred = model.predict(grid).predictive
            mean, sd = pred.mean, pred.variance.sqrt()
            result[name] = metrics.nll(model.predict(x).predictive, y)
        ax.scatter(x.squeeze(), y, s=4, c="k", alpha=0.5, label="data")
        ax.plot(grid.squeeze(), mean, c="C0", label="predictive mean")
        ax.fill_between(grid.squeeze(), mean - 2 * sd, mean + 2 * sd, color="C0", alpha=0.25, label="mean +- 2 sd")
        ax.set_title(f"{name} VBLL (train NLL {result[name]:.2f})" + suffix)
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "toy_band.png", dpi=100)
    plt.close(fig)
    return result


# ----- 2. diabetes


def diabetes(seed):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[: int(0.8 * len(y))], perm[int(0.8 * len(y)) :]
    mx, sx, my, sy = x[tr].mean(0), x[tr].std(0), y[tr].mean(), y[tr].std()
    return (x[tr] - mx) / sx, (y[tr] - my) / sy, (x[te] - mx) / sx, (y[te] - my) / sy


def fit_vbll(x, y, steps, seed):
    torch.manual_seed(seed)
    head = VBLLRegression(WIDTH, prior_scale=WIDTH**-0.5, noise_variance=1.0, wishart_scale=1e-2)
    model = VBLLModel(mlp(x.shape[1]), head, num_data=len(y))
    train(model, x, y, steps, seed=seed)
    return model


def gaussian_net(x, y, steps, seed):
    """A network with mean and log-variance outputs trained by Gaussian NLL."""
    torch.manual_seed(seed)
    net = GaussianNet(x.shape[1])
    train(net, x, y, steps, seed=seed)
    return net


def evaluate_diabetes(seed, steps):
    x_tr, y_tr, x_te, y_te = diabetes(seed)
    out = {}
    model = fit_vbll(x_tr, y_tr, steps, seed)
    with torch.no_grad():
        pred = model.predict(x_te).predictive
        out["vbll"] = (metrics.nll(pred, y_te), metrics.rmse(pred, y_te))
    # the same head refit after training, in closed form on the trained features of the
    # training split, at the prior scale and noise that maximize the exact evidence (float64)
    refit = copy.deepcopy(model)
    refit.head.double()
    refit.solve_posterior(x_tr, y_tr, tune=True)
    with torch.no_grad():
        pred = refit.head(refit.features(x_te).double()).predictive
        out["vbll_refit_tuned"] = (metrics.nll(pred, y_te.double()), metrics.rmse(pred, y_te.double()))
    # deterministic network: MSE training, Gaussian noise at the training residual variance
    torch.manual_seed(seed)
    net = MSENet(x_tr.shape[1])
    train(net, x_tr, y_tr, steps, seed=seed)
    with torch.no_grad():
        noise = (net.net(x_tr).squeeze(-1) - y_tr).pow(2).mean()
        pred = torch.distributions.Normal(net.net(x_te).squeeze(-1), noise.sqrt())
        out["deterministic"] = (metrics.nll(pred, y_te), metrics.rmse(pred, y_te))
    # deep ensemble of five Gaussian networks: a uniform mixture of their predictives
    members = [gaussian_net(x_tr, y_tr, steps, seed=100 * seed + k) for k in range(5)]
    with torch.no_grad():
        preds = [m.predict(x_te) for m in members]
        mean, scale = torch.stack([p.mean for p in preds], 1), torch.stack([p.stddev for p in preds], 1)  # [N, 5]
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=torch.zeros_like(mean)),
            torch.distributions.Normal(mean, scale),
        )
        out["deep_ensemble_5"] = (metrics.nll(mix, y_te), metrics.rmse(mix, y_te))
    from sklearn.linear_model import BayesianRidge

    br_mean, br_std = BayesianRidge().fit(x_tr.numpy(), y_tr.numpy()).predict(x_te.numpy(), return_std=True)
    pred = torch.distributions.Normal(torch.as_tensor(br_mean), torch.as_tensor(br_std))
    out["bayesian_ridge"] = (metrics.nll(pred, y_te.double()), metrics.rmse(pred, y_te.double()))
    return out, (model.features, x_tr, y_tr)


# ----- 3. deterministic vs sampled objectives on frozen features


def objectives(out_dir, trained, steps, suffix=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features, x, y = trained
    with torch.no_grad():
        phi = features(x).double()
    y = y.double()
    n, noise = len(y), 0.5
    log_z = float(BayesianLinearRegression(WIDTH, WIDTH**-0.5, noise).log_evidence(phi, y))
    runs = {
        "deterministic": None,  # the head's own closed-form bound: VBLLModel's forward
        "MC ELBO, K=1": lambda h, p, t: h.mc_loss(p, t, n, 1).loss,
        "MC ELBO, K=8, STL": lambda h, p, t: h.mc_loss(p, t, n, 8, vt.objectives.elbo, vt.estimators.stl).loss,
    }
    curves, seconds = {}, {}
    for name, objective in runs.items():
        torch.manual_seed(0)
        head = VBLLRegression(WIDTH, prior_scale=WIDTH**-0.5, noise_variance=noise, learn_noise=False).double()
        model = VBLLModel(nn.Identity(), head, num_data=n) if objective is None else MonteCarloHead(head, objective)
        trace = []

        def record(ctx, head=head, trace=trace):
            with torch.no_grad():
                trace.append(float(head.elbo(phi, y)))

        t0 = time.perf_counter()
        train(model, phi, y, steps, batch=n, callbacks=[record])  # full batch: every step sees all n
        seconds[name] = time.perf_counter() - t0
        curves[name] = trace
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, trace in curves.items():
        ax.plot(trace, label=name)
    ax.axhline(log_z, c="k", ls="--", label="exact log evidence")
    ax.set_ylim(log_z - 0.5 * abs(log_z), log_z + 0.05 * abs(log_z))
    ax.set_xlabel("Adam step")
    ax.set_ylabel("deterministic ELBO of the current q")
    ax.set_title("frozen diabetes features: ELBO per step" + suffix)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "objectives.png", dpi=100)
    plt.close(fig)
    return {name: trace[-1] - log_z for name, trace in curves.items()}, seconds


class MonteCarloHead(nn.Module):
    """A head on fixed features trained on a sampled bound: ``forward((phi, y))`` is ``objective(head, phi, y)``."""

    def __init__(self, head, objective):
        super().__init__()
        self.head, self.objective = head, objective

    def forward(self, batch):
        return self.objective(self.head, *batch)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", default="outputs/vbll_regression", help="where figures go")
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny networks: a second thread only adds contention
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # 1000 is the benchmark's budget (longer runs overfit diabetes); the smoke run only checks the code paths.
    steps = 30 if args.quick else 1000
    splits = 1 if args.quick else 5

    suffix = " (quick smoke run)" if args.quick else ""
    toy_nll = toy(out_dir, steps, suffix)
    print(f"toy train NLL: {json.dumps({k: round(v, 3) for k, v in toy_nll.items()})}")

    results = []
    for seed in range(splits):
        res, trained = evaluate_diabetes(seed, steps)
        results.append(res)
        print(f"diabetes split {seed}: " + ", ".join(f"{k} NLL {v[0]:.3f} RMSE {v[1]:.3f}" for k, v in res.items()))
    summary = {k: [statistics.median(r[k][i] for r in results) for i in (0, 1)] for k in results[0]}
    for k, (nll, rmse) in summary.items():
        print(f"diabetes median over {splits} split(s): {k:>16}  NLL {nll:.3f}  RMSE {rmse:.3f}")

    gaps, seconds = objectives(out_dir, trained, 25 if args.quick else 2000, suffix)
    for k in gaps:
        print(f"frozen features: {k:>20}: ELBO - log Z = {gaps[k]:.3f} after training ({seconds[k]:.2f} s)")

    headline = {
        "toy_train_nll": toy_nll,
        "diabetes_test_nll": {k: v[0] for k, v in summary.items()},
        "diabetes_test_rmse": {k: v[1] for k, v in summary.items()},
        "splits": splits,
        "steps": steps,
        "frozen_elbo_gap": gaps,
        "figures": [str(out_dir / "toy_band.png"), str(out_dir / "objectives.png")],
    }
    print(json.dumps({**headline, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
