"""Variational Bayesian last layers for classification on scikit-learn's digits, with OOD detection.

Digits 0-7 are the in-distribution classes (train on 75%, test on the rest); digits
8 and 9 are held out entirely and serve as out-of-distribution inputs.  Four models
share one feature network shape (``64 -> 64 -> 64``, ELU) and the same training
budget (Adam, lr 1e-3, batch 64):

* ``softmax``: a deterministic softmax classifier (OOD score ``1 - max_k p_k``);
* ``vbll``: the discriminative VBLL head trained end to end (Jensen bound);
* ``g_vbll``: the generative VBLL head trained end to end (OOD score: negative
  feature log-density under the class-conditional Gaussians);
* ``softmax + post hoc vbll`` / ``g_vbll``: the discriminative head (L-BFGS) and the
  generative head (closed form) fitted on the frozen features of the softmax network
  (``solve_posterior``).

Every network trains through :func:`vitorch.fit`: the VBLL models are
:class:`~vitorch.models.last_layer.VBLLModel` (``model((x, y))`` returns the head's
:class:`vitorch.LossOutput`), the softmax network a module whose forward returns its loss.

Reported on the in-distribution test set: accuracy, NLL and expected calibration
error (15 bins), with a reliability diagram per model (``reliability_<model>.png``);
and OOD AUROC of in-distribution test digits against the held-out digits, both by
each model's own OOD score and by ``1 - max_k p_k`` for all.

    python examples/vbll_classification.py [--quick] [--out outputs/vbll_classification]

The last line of output is a JSON object of headline metrics.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
from torch import nn
from torch.nn import functional as F

import vitorch as vt
from vitorch.models.last_layer import VBLLClassification, VBLLGenerativeClassification, VBLLModel, metrics

WIDTH = 64
NUM_IN = 8  # digits 0..7 are in distribution; 8 and 9 are out of distribution


def load_digits(seed: int = 0):
    from sklearn.datasets import load_digits as load

    x, y = load(return_X_y=True)
    x, y = torch.as_tensor(x, dtype=torch.float32) / 16.0, torch.as_tensor(y)
    inside = y < NUM_IN
    x_in, y_in, x_ood = x[inside], y[inside], x[~inside]
    perm = torch.randperm(len(y_in), generator=torch.Generator().manual_seed(seed))
    n_tr = int(0.75 * len(y_in))
    tr, te = perm[:n_tr], perm[n_tr:]
    mean, std = x_in[tr].mean(0), x_in[tr].std(0).clamp_min(1e-2)
    norm = lambda t: (t - mean) / std  # noqa: E731
    return norm(x_in[tr]), y_in[tr], norm(x_in[te]), y_in[te], norm(x_ood)


def features(d_in: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, WIDTH), nn.ELU(), nn.Linear(WIDTH, WIDTH), nn.ELU())


def train(model, x, y, steps, seed, batch=64, lr=1e-3):
    """``steps`` Adam steps on shuffled minibatches of ``(x, y)`` by :func:`vitorch.fit`."""
    vt.fit(model, (x, y), steps=steps, batch_size=batch, lr=lr, seed=seed, progress=False)


class Softmax(nn.Module):
    """A deterministic softmax classifier: ``forward((x, y))`` is the cross-entropy."""

    def __init__(self, d_in):
        super().__init__()
        self.features, self.head = features(d_in), nn.Linear(WIDTH, NUM_IN)

    def forward(self, batch):
        x, y = batch
        return F.cross_entropy(self.head(self.features(x)), y)

    def predict(self, x):
        probs = self.head(self.features(x)).softmax(-1)
        return probs, 1 - probs.max(-1).values


def scores(model, x):
    """``(class probabilities [N, C], OOD score [N])`` from a softmax network or a VBLL model."""
    out = model.predict(x)
    if isinstance(model, VBLLModel):  # the head's LastLayerOutput: predictive and its own OOD score
        return out.predictive.probs, out.ood_score
    return out


class Float64Features(nn.Module):
    """A trained network's features, in float64 for a head fitted in float64."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, x):
        return self.features(x).double()


def post_hoc(net, head, x, y, lbfgs_steps=100):
    """A VBLL head fitted (``solve_posterior``, float64) on a trained network's frozen features.

    The discriminative head has no closed-form optimum: ``lbfgs_steps`` L-BFGS iterations at most.
    """
    model = VBLLModel(Float64Features(net.features), head.double(), num_data=len(y))
    kwargs = {"steps": lbfgs_steps} if isinstance(head, VBLLClassification) else {}
    return model.solve_posterior(x, y, **kwargs)


def evaluate(model, x_te, y_te, x_ood, out_dir, name, suffix=""):
    """In-distribution accuracy, NLL, ECE; OOD AUROC by the model's own score and by ``1 - max_k p_k``."""
    with torch.no_grad():
        probs, score_in = scores(model, x_te)
        probs_ood, score_out = scores(model, x_ood)
    probs = probs.double()
    nll = float(-probs.gather(-1, y_te[:, None]).clamp_min(1e-300).log().mean())
    ece = metrics.reliability_diagram(probs, y_te, out_dir / f"reliability_{name}.png", title=name + suffix)
    return {
        "accuracy": metrics.accuracy(probs, y_te),
        "nll": nll,
        "ece": ece,
        "ood_auroc": metrics.auroc(score_in, score_out),
        "ood_auroc_maxprob": metrics.auroc(1 - probs.max(-1).values, 1 - probs_ood.double().max(-1).values),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", default="outputs/vbll_classification", help="where figures go")
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny networks: a second thread only adds contention
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = 60 if args.quick else 4000
    x_tr, y_tr, x_te, y_te, x_ood = load_digits()
    suffix = " (quick smoke run)" if args.quick else ""
    d, n = x_tr.shape[1], len(y_tr)
    print(f"digits: {n} train / {len(y_te)} test in distribution (0-{NUM_IN - 1}), {len(x_ood)} held-out 8s and 9s")

    torch.manual_seed(0)
    models = {
        "softmax": Softmax(d),
        "vbll": VBLLModel(features(d), VBLLClassification(WIDTH, NUM_IN), num_data=n),
        "g_vbll": VBLLModel(features(d), VBLLGenerativeClassification(WIDTH, NUM_IN), num_data=n),
    }
    results = {}
    for name, model in models.items():
        train(model, x_tr, y_tr, steps, seed=1)
        results[name] = evaluate(model, x_te, y_te, x_ood, out_dir, name, suffix)
    heads = {
        "softmax + post hoc vbll": VBLLClassification(WIDTH, NUM_IN),
        "softmax + post hoc g_vbll": VBLLGenerativeClassification(WIDTH, NUM_IN),
    }
    for name, head in heads.items():
        model = post_hoc(models["softmax"], head, x_tr, y_tr, 20 if args.quick else 100)
        file_name = name.replace(" + ", "_").replace(" ", "_")
        results[name] = evaluate(model, x_te, y_te, x_ood, out_dir, file_name, suffix)
    for name, r in results.items():
        print(f"{name:>26}: " + "  ".join(f"{k} {v:.4f}" for k, v in r.items()))
    print(
        json.dumps(
            {"steps": steps, **results, "figures_dir": str(out_dir), "quick_smoke_run_not_converged": args.quick}
        )
    )


if __name__ == "__main__":
    main()
