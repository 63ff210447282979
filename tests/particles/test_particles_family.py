"""``Particles``: uniform draws (chi-square), moments, no density; and bad input to the samplers."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from vitorch.particles import SVGD, CoinSVGD, Particles


def _lin(z):
    return -z.sum(-1)


def test_draws_pick_particles_uniformly():
    n, S = 8, 40_000
    x = torch.arange(n, dtype=torch.float64)[:, None] * torch.tensor([1.0, -1.0])
    draws = Particles(x).sample((S,))
    assert draws.shape == (S, 2) and not draws.requires_grad
    counts = torch.bincount(draws[:, 0].long(), minlength=n)
    # Chi-square goodness of fit to the uniform law on the n particles; p-value floor 1e-6.
    assert stats.chisquare(counts.numpy()).pvalue > 1e-6


def test_shapes_moments_and_gradients():
    x = torch.randn(30, 3, requires_grad=True)
    q = Particles(x)
    assert q.batch_shape == () and q.event_shape == (3,) and q.num_particles == 30
    assert q.sample((4, 5)).shape == (4, 5, 3) and q.rsample().shape == (3,)
    torch.testing.assert_close(q.mean, x.mean(0))
    torch.testing.assert_close(q.covariance_matrix, torch.cov(x.T, correction=0))
    torch.testing.assert_close(q.variance, q.covariance_matrix.diagonal())
    torch.testing.assert_close(q.expect(lambda z: z.pow(2)), x.pow(2).mean(0))
    q.rsample((100,)).sum().backward()  # rsample is differentiable in the particles
    assert x.grad is not None and x.grad.sum() == 100 * 3
    assert q.expand(()) is q
    with pytest.raises(ValueError, match="batch shape"):
        q.expand((2,))


def test_log_prob_and_entropy_raise_a_clear_error():
    q = Particles(torch.randn(5, 2))
    with pytest.raises(NotImplementedError, match="no density.*ksd"):
        q.log_prob(torch.zeros(2))
    with pytest.raises(NotImplementedError, match="no density"):
        q.entropy()


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: Particles(torch.randn(5)), ValueError, r"\[n, D\]"),
        (lambda: Particles(torch.zeros(5, 2, dtype=torch.long)), TypeError, "floating"),
        (lambda: Particles(torch.tensor([[0.0, float("nan")]])), ValueError, "NaN"),
        (lambda: SVGD("log p", torch.randn(5, 2), lr=0.1), TypeError, "log_prob must be callable"),
        (lambda: SVGD(_lin, torch.randn(5, 2), lr=0.0), ValueError, "lr"),
        (lambda: SVGD(_lin, torch.randn(5, 2), lr=float("inf")), ValueError, "lr"),
        (lambda: SVGD(lambda z: -z.sum(-1), torch.ones(5, 2), lr=0.1), ValueError, "identical"),
        (lambda: SVGD(_lin, torch.randn(5, 2), lr=0.1, bandwidth=-1.0), ValueError, "bandwidth"),
        (lambda: SVGD(_lin, torch.randn(5, 2), lr=0.1, preconditioner="hessian"), TypeError, "preco"),
        (lambda: SVGD(_lin, torch.randn(5, 2), lr=0.1, preconditioner=torch.ones(3)), ValueError, "D = 2"),
        (lambda: SVGD(_lin, torch.randn(5, 2), lr=0.1, preconditioner=-torch.ones(2)), ValueError, "positive"),
        (
            lambda: SVGD(_lin, torch.randn(5, 2), lr=0.1, preconditioner=torch.diag(torch.tensor([1.0, -1.0]))),
            ValueError,
            "positive definite",
        ),
        (lambda: CoinSVGD(_lin, torch.randn(5, 2), initial_scale=0.0), ValueError, "initial_scale"),
    ],
)
def test_bad_construction_names_the_culprit(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_bad_targets_and_runs_name_the_culprit():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"to \[n\] = \[5\].*got shape \(5, 2\)"):
        SVGD(lambda z: -z, x, lr=0.1).step()
    with pytest.raises(TypeError, match="must return a tensor"):
        SVGD(lambda z: 1.0, x, lr=0.1).step()
    with pytest.raises(ValueError, match="does not depend"):
        SVGD(lambda z: torch.zeros(5), x, lr=0.1).step()
    # A particle that leaves the target's support is reported with the step.
    svgd = SVGD(lambda z: torch.log(1.0 - z[:, 0]) - (z**2).sum(-1), x.clamp(max=0.0) - 1.0, lr=10.0)
    with pytest.raises(ValueError, match=r"not finite at \d+ of 5 particles at step 1"):
        svgd.run(5)
    with pytest.raises(ValueError, match="steps"):
        CoinSVGD(lambda z: -(z**2).sum(-1), x).run(-1)
