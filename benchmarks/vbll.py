"""VBLL regression heads: vitorch against the ``vbll`` package on the same features and settings.

Data: scikit-learn's diabetes set (442 x 10), inputs and targets standardized with
training-split statistics, an 80/20 split fixed by seed.  Feature network
``10 -> 64 -> 64`` (ELU), trained end to end with each head by Adam (lr 1e-3),
batch 32, 1,000 steps, identical initial weights and minibatch order.  Both VBLL
heads use a dense weight covariance, the same prior variance ``1 / 64`` per weight,
learned diagonal noise with the same inverse-Wishart regularizer (scale 1e-2,
1 degree of freedom), KL weight ``1 / N`` and the same initial head (``q`` equal to
the prior with zero mean, noise variance 1).  A plain Gaussian MLP head (mean and
log-variance outputs, Gaussian NLL) sets the cost floor, and scikit-learn's
``BayesianRidge`` on the raw inputs sets the NLL bar.

Each line reports the median wall time of the whole 1,000-step training run and,
as extras, the standardized test NLL (per target) after it.

    python benchmarks/vbll.py [--quick] [--threads 2] [--repeats R]
"""

from __future__ import annotations

import math
import os
import sys

import torch
from torch import nn

from _harness import interleaved_medians, parser, report, setup, try_import

# This file is itself named vbll.py: drop its folder from the path before importing the peer.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
vbll, _vbll_missing = try_import("vbll")
if vbll is not None:
    import vbll.layers.regression  # noqa: F401  (the submodule holding Regression)

from vitorch.models.last_layer import VBLLRegression  # noqa: E402

WIDTH = 64
PRIOR_VAR = 1.0 / WIDTH
WISHART_SCALE, WISHART_DOF = 1e-2, 1.0
LOG_2PI = math.log(2 * math.pi)


def load_diabetes(seed: int = 0):
    from sklearn.datasets import load_diabetes as load

    x, y = load(return_X_y=True)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    mx, sx, my, sy = x[tr].mean(0), x[tr].std(0), y[tr].mean(), y[tr].std()
    return (x[tr] - mx) / sx, (y[tr] - my) / sy, (x[te] - mx) / sx, (y[te] - my) / sy


def features(d_in: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, WIDTH), nn.ELU(), nn.Linear(WIDTH, WIDTH), nn.ELU())


class VitorchModel(nn.Module):
    def __init__(self, d_in, n):
        super().__init__()
        self.features, self.n = features(d_in), n
        self.head = VBLLRegression(
            WIDTH, 1, prior_scale=PRIOR_VAR**0.5, noise_variance=1.0, wishart_scale=WISHART_SCALE,
            wishart_dof=WISHART_DOF,
        )  # fmt: skip

    def loss(self, x, y):
        return self.head.loss(self.features(x), y, self.n)

    def nll(self, x, y):
        return float(-self.head(self.features(x)).predictive.log_prob(y).mean())


class PeerModel(nn.Module):
    def __init__(self, d_in, n):
        super().__init__()
        self.features = features(d_in)
        # vbll's prior variance is prior_scale / in_features
        self.head = vbll.layers.regression.Regression(
            WIDTH, 1, regularization_weight=1.0 / n, parameterization="dense", prior_scale=PRIOR_VAR * WIDTH,
            wishart_scale=WISHART_SCALE, dof=WISHART_DOF,
        )  # fmt: skip
        # Start from vitorch's initial head (q = prior with zero mean, noise variance 1)
        # rather than vbll's random one, so that both runs begin from the same point.
        with torch.no_grad():
            self.head.W_mean.zero_()
            self.head.W_logdiag.fill_(0.5 * math.log(PRIOR_VAR))
            self.head.W_offdiag.zero_()
            self.head.noise_logdiag.zero_()

    def loss(self, x, y):
        return self.head(self.features(x)).train_loss_fn(y[:, None])

    def nll(self, x, y):
        return float(self.head(self.features(x)).val_loss_fn(y[:, None]))


class MLPModel(nn.Module):
    """Deterministic Gaussian head: mean and log-variance, trained by Gaussian NLL."""

    def __init__(self, d_in, n):
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


def train(model_cls, data, steps: int, batch: int, seed: int):
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = model_cls(x_tr.shape[1], len(y_tr))
    # identical feature-network initialization and minibatch order for every head
    model.features.load_state_dict(features_init(x_tr.shape[1], seed).state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(y_tr), (steps, batch), generator=g)
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        model.loss(x_tr[idx[t]], y_tr[idx[t]]).backward()
        opt.step()
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


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (1000; 100 with --quick)")
    args = p.parse_args()
    setup(args)
    steps = args.steps or (100 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 5)
    data = load_diabetes()
    nlls: dict[str, list[float]] = {"vitorch": [], "vbll": [], "mlp": []}

    def runner(name, cls):
        def run():
            nlls[name].append(train(cls, data, steps, 32, seed=len(nlls[name])))

        return run

    fns = {"vitorch": runner("vitorch", VitorchModel), "mlp": runner("mlp", MLPModel)}
    if vbll is not None:
        fns["vbll"] = runner("vbll", PeerModel)
    times = interleaved_medians(fns, repeats=repeats, warmup=0 if args.quick else 1)
    med = {k: sorted(v)[len(v) // 2] for k, v in nlls.items() if v}
    common = {"steps": steps, "batch": 32, "bayesian_ridge_nll": bayesian_ridge_nll(data)}
    case = f"diabetes_{steps}_steps"
    report(
        "vbll", case, times["vitorch"], "vbll", times.get("vbll"), vitorch_nll=med["vitorch"],
        peer_nll=med.get("vbll"), **common, **({"skipped": _vbll_missing} if vbll is None else {}),
    )  # fmt: skip
    report("vbll", case, times["vitorch"], "gaussian_mlp_head", times["mlp"], vitorch_nll=med["vitorch"],
           peer_nll=med["mlp"], **common)  # fmt: skip


if __name__ == "__main__":
    main()
