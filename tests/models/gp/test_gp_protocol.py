"""Every trainable GP model passes the model protocol (``vitorch.testing.ModelTestCase``): ``forward((X, y))``
returns a per-datum LossOutput, every parameter gets a gradient, the bound stays below the exact evidence
(ExactGP's log marginal likelihood, per datum), ``vt.fit`` trains and resumes bit for bit, ``predict`` exists."""

from __future__ import annotations

import torch

from vitorch.models import gp
from vitorch.testing import ModelTestCase

N = 24


def _regression():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 2, generator=g, dtype=torch.float64) * 3
    y = torch.sin(2 * x).sum(-1) + 0.1 * torch.randn(N, generator=g, dtype=torch.float64)
    return x, y


def _classification():
    x, f = _regression()
    return x, (f > 0).to(torch.float64)


def _exact_per_datum(model, batch):
    """``log p(y) / N`` in every entry, from the exact GP with the model's kernel, noise and mean."""
    x, y = batch
    exact = gp.ExactGP(model.kernel, noise=model.likelihood.noise.detach(), mean=model.mean)
    return (exact.log_marginal_likelihood(x, y) / x.shape[0]).expand(x.shape[0])


class TestSVGPGaussianProtocol(ModelTestCase):
    fit_kwargs = {"lr": 0.05}

    def make_model(self):
        x, _ = _regression()
        return gp.SVGP(gp.RBF(torch.ones(2)), x[::4], gp.GaussianLikelihood(noise=0.1), num_data=N)

    def make_data(self):
        return _regression()

    def exact_log_evidence(self, model, batch):
        return _exact_per_datum(model, batch)

    def predict_args(self, batch):
        return (batch[0],)


class TestSVGPBernoulliProtocol(ModelTestCase):
    fit_kwargs = {"lr": 0.05}

    def make_model(self):
        x, _ = _classification()
        return gp.SVGP(gp.Matern52(torch.ones(2)), x[::4], gp.BernoulliLogit(), num_data=N, mean=gp.ConstantMean())

    def make_data(self):
        return _classification()

    def predict_args(self, batch):
        return (batch[0],)


class TestSGPRProtocol(ModelTestCase):
    fit_kwargs = {"lr": 0.05}

    def make_model(self):
        x, _ = _regression()
        return gp.SGPR(gp.RBF(torch.ones(2)), x[::4] + 0.05, noise=0.1)

    def make_data(self):
        return _regression()

    def exact_log_evidence(self, model, batch):
        return _exact_per_datum(model, batch)

    def predict_args(self, batch):
        return (batch[0], batch[1], batch[0])


class TestExactGPProtocol(ModelTestCase):
    fit_kwargs = {"lr": 0.05}

    def make_model(self):
        return gp.ExactGP(gp.Matern32(torch.ones(2)) + gp.Linear(0.1), noise=0.1, mean=gp.ConstantMean())

    def make_data(self):
        return _regression()

    def exact_log_evidence(self, model, batch):
        return _exact_per_datum(model, batch)  # the bound is exact: equal up to rounding

    def predict_args(self, batch):
        return (batch[0], batch[1], batch[0])
