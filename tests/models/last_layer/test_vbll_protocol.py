"""Every VBLL head, wrapped as ``VBLLModel(features, head, N)``, passes the model protocol (``ModelTestCase``).

``forward((x, y))`` returns a per-datum :class:`vitorch.LossOutput` (``bound_n = E_q log p(y_n) -
penalty / N``), every parameter gets a gradient, ``vt.fit`` trains and resumes bit for bit,
``predict`` exists.  On the conjugate cases (Gaussian and Student-t regression on fixed
features) the bound is checked against the exact evidence of the Bayesian linear model, per
datum ``log p(Y) / N``: below it in general, and equal to it at the exact posterior
(``solve_posterior``), where the family contains the posterior.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vitorch as vt
from vitorch.models.last_layer import (
    BayesianLinearRegression,
    Dense,
    Diagonal,
    VBLLClassification,
    VBLLDenseNoiseRegression,
    VBLLGenerativeClassification,
    VBLLHeteroscedasticRegression,
    VBLLModel,
    VBLLRegression,
    VBLLStudentTRegression,
)
from vitorch.testing import ModelTestCase

N, D = 24, 3


def _regression(outputs: int = 1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, outputs, generator=g, dtype=torch.float64)
    y = x @ w + 0.3 * torch.randn(N, outputs, generator=g, dtype=torch.float64)
    return x, y.squeeze(-1) if outputs == 1 else y


def _classification():
    x, f = _regression(outputs=3)
    return x, f.argmax(-1)


def _features():
    return nn.Sequential(nn.Linear(D, 4), nn.Tanh())


def _blr_per_datum(model, batch):
    """``log p(y) / N`` in every entry: the exact evidence of the head's Bayesian linear model (fixed noise)."""
    x, y = batch
    head = model.head
    blr = BayesianLinearRegression(D, prior_scale=float(head.prior_scale), noise_variance=float(head.noise_variance))
    return (blr.log_evidence(x, y) / N).expand(N)


class _ConjugateRegression(ModelTestCase):
    """Gaussian regression on fixed features with a fixed noise: the deterministic ELBO bounds ``log p(Y)``."""

    covariance = Dense

    def make_model(self):
        head = VBLLRegression(D, 1, prior_scale=0.8, noise_variance=0.3, learn_noise=False, covariance=self.covariance)
        with torch.no_grad():
            head.weights.mean.normal_()  # away from the posterior: the bound is strictly below
        return VBLLModel(nn.Identity(), head, num_data=N)

    def make_data(self):
        return _regression()

    def exact_log_evidence(self, model, batch):
        return _blr_per_datum(model, batch)

    def test_bound_is_tight_at_the_exact_posterior(self):
        model, data = self._model(), self._data()
        model.solve_posterior(*data)
        with torch.no_grad():
            bound = model(data).bound
            exact = self.exact_log_evidence(model, data)
        torch.testing.assert_close(bound.mean(), exact.mean(), rtol=1e-10, atol=1e-12)


class TestDenseRegressionProtocol(_ConjugateRegression):
    covariance = Dense


class TestDiagonalRegressionProtocol(_ConjugateRegression):
    """Mean field: the family lacks the posterior, so the bound is below the evidence even at its optimum."""

    covariance = Diagonal

    def test_bound_is_tight_at_the_exact_posterior(self):
        model, data = self._model(), self._data()
        model.solve_posterior(*data)
        with torch.no_grad():
            gap = float((self.exact_log_evidence(model, data) - model(data).bound).mean())
        assert gap > 1e-6


class TestLearnedNoiseRegressionProtocol(ModelTestCase):
    # a learned noise adds its inverse-Wishart log prior to the objective: loss = -mean(bound) still
    def make_model(self):
        return VBLLModel(_features(), VBLLRegression(4, 2, prior_scale=0.8), num_data=N)

    def make_data(self):
        return _regression(outputs=2)


class TestDenseNoiseRegressionProtocol(ModelTestCase):
    def make_model(self):
        return VBLLModel(_features(), VBLLDenseNoiseRegression(4, 2, prior_scale=0.8), num_data=N)

    def make_data(self):
        return _regression(outputs=2)


class TestHeteroscedasticProtocol(ModelTestCase):
    def make_model(self):
        return VBLLModel(_features(), VBLLHeteroscedasticRegression(4, 1, noise_covariance=Diagonal), num_data=N)

    def make_data(self):
        return _regression()


class TestHeteroscedasticDenseProtocol(ModelTestCase):
    def make_model(self):
        return VBLLModel(_features(), VBLLHeteroscedasticRegression(4, 2, noise_covariance=Dense), num_data=N)

    def make_data(self):
        return _regression(outputs=2)


class TestClassificationProtocol(ModelTestCase):
    def make_model(self):
        return VBLLModel(_features(), VBLLClassification(4, 3), num_data=N)

    def make_data(self):
        return _classification()


class TestGenerativeClassificationProtocol(ModelTestCase):
    def make_model(self):
        return VBLLModel(_features(), VBLLGenerativeClassification(4, 3), num_data=N)

    def make_data(self):
        return _classification()


def _student_t_log_evidence(head, x, y):
    """``log p(y | X)`` under the normal-gamma model (Bishop, PRML, Sec. 3.3 and 2.3.6), one output."""
    s2, a0, b0 = float(head.prior_scale) ** 2, head.prior_concentration, head.prior_rate
    precision = x.mT @ x + torch.eye(D) / s2
    mean = torch.linalg.solve(precision, x.mT @ y)
    a_n, b_n = a0 + 0.5 * N, b0 + 0.5 * (y @ y - mean @ precision @ mean)
    return (-0.5 * N * math.log(2 * math.pi) - 0.5 * torch.logdet(precision) - 0.5 * D * math.log(s2)
            + a0 * math.log(b0) - a_n * b_n.log() + math.lgamma(a_n) - math.lgamma(a0))  # fmt: skip


class TestStudentTProtocol(ModelTestCase):
    def make_model(self):
        head = VBLLStudentTRegression(D, 1, prior_scale=0.8, prior_concentration=2.0, prior_rate=1.5)
        with torch.no_grad():
            head.weights.mean.normal_()
        return VBLLModel(nn.Identity(), head, num_data=N)

    def make_data(self):
        return _regression()

    def exact_log_evidence(self, model, batch):
        return (_student_t_log_evidence(model.head, *batch) / N).expand(N)

    def test_bound_is_tight_at_the_exact_posterior(self):
        model, data = self._model(), self._data()
        model.solve_posterior(*data)
        with torch.no_grad():
            bound = model(data).bound
        torch.testing.assert_close(bound.mean(), self.exact_log_evidence(model, data).mean(), rtol=1e-10, atol=1e-12)


# ----- VBLLModel itself, predict after a round trip, the deprecated fit


def test_predict_survives_a_state_dict_round_trip():
    x, y = _regression()
    model = VBLLModel(_features(), VBLLHeteroscedasticRegression(4), num_data=N)
    vt.fit(model, (x, y), steps=3, batch_size=8, progress=False)
    other = VBLLModel(_features(), VBLLHeteroscedasticRegression(4), num_data=N)
    other.load_state_dict(model.state_dict())
    a, b = model.predict(x).predictive, other.predict(x).predictive
    assert torch.equal(a.mean, b.mean) and torch.equal(a.variance, b.variance)


def test_vbll_model_trains_and_refits_through_its_head():
    x, y = _regression()
    model = VBLLModel(_features(), VBLLRegression(4, prior_scale=0.5), num_data=N)
    history = vt.fit(model, (x, y), steps=20, batch_size=8, progress=False, lr=1e-2)
    assert len(history.steps) == 20
    model.head.double()
    model.solve_posterior(x, y, tune=True)
    assert model.predict(x).predictive.batch_shape == (N,)
    with pytest.raises(ValueError, match="pair"):
        model(x)
    with pytest.raises(TypeError, match="nn.Modules"):
        VBLLModel(lambda t: t, VBLLRegression(D), N)
    with pytest.raises(ValueError, match="num_data"):
        VBLLModel(nn.Identity(), VBLLRegression(D), 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: VBLLRegression(D),
        lambda: VBLLStudentTRegression(D),
        lambda: VBLLGenerativeClassification(D, 3),
        lambda: BayesianLinearRegression(D),
    ],  # fmt: skip
)
def test_fit_is_a_deprecated_alias_of_solve_posterior(make):
    x, y = _classification() if isinstance(make(), VBLLGenerativeClassification) else _regression()
    head, reference = make(), make()
    with pytest.warns(DeprecationWarning, match="solve_posterior"):
        assert head.fit(x, y) is head
    reference.solve_posterior(x, y)
    for a, b in zip(head.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_classification_fit_is_deprecated_too():
    x, y = _classification()
    with pytest.warns(DeprecationWarning, match="VBLLClassification.fit"):
        VBLLClassification(D, 3).fit(x, y, steps=2)
