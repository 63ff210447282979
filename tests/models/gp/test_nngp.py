"""Nearest-neighbour GP: with k = M it is an SVGP; with Z = X it reaches the exact posterior mean; the
Vecchia KL with k < M against a dense Gaussian built independently; neighbour search against numpy;
the minibatch KL estimate; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitorch as vt
from vitorch.families import DiagNormal
from vitorch.models import gp
from vitorch.models.gp import nngp
from vitorch.models.gp.nngp import NNGP

# Two float64 routes to one number over matrices of size <= 30: rounding ~1e-12 relative.
RTOL = 1e-9


def _data(n=30):
    x = torch.rand(n, 2) * 3
    return x, torch.sin(2 * x).sum(-1) + 0.1 * torch.randn(n)


def _kernel():
    return gp.RBF(torch.tensor([0.8, 1.3]), 1.2)


def _randomize(model):
    with torch.no_grad():
        model.q_loc.normal_()
        model.q_scale.uniform_(0.1, 0.8)


@pytest.mark.parametrize("kernel", [_kernel, lambda: gp.Matern52(torch.tensor([0.7, 1.1]), 0.9)])
def test_with_k_equal_to_m_it_is_the_diagonal_unwhitened_svgp(kernel):
    x, y = _data()
    z = torch.rand(7, 2) * 3
    xs = torch.rand(9, 2) * 3
    lik = gp.GaussianLikelihood(0.1)
    model = NNGP(kernel(), z, lik, num_data=30, k=7, mean=gp.ConstantMean(0.4))
    svgp = gp.SVGP(kernel(), z, lik, num_data=30, family=DiagNormal, whiten=False, mean=gp.ConstantMean(0.4))
    _randomize(model)
    with torch.no_grad():
        svgp.q_loc.copy_(model.q_loc - 0.4)  # SVGP's u is the deviation from the prior mean
        svgp.q_diag.copy_(model.q_scale)
    want, got = svgp.full_data_elbo(x, y), model.full_data_elbo(x, y)
    assert abs(float(got.detach() - want.detach())) < RTOL * abs(float(want))
    # the gradients to the kernel's hyperparameters (through the neighbour solves' own backward) agree
    g_got = torch.autograd.grad(got, list(model.kernel.parameters()))
    g_want = torch.autograd.grad(want, list(svgp.kernel.parameters()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(model.kl(), svgp.kl(), rtol=RTOL, atol=0)
        for a, b in zip(model.predict(xs), svgp.predict(xs)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_with_z_at_the_data_its_optimum_holds_the_exact_posterior_mean():
    n = 20
    x, y = _data(n)
    xs = torch.rand(6, 2) * 3
    model = NNGP(_kernel(), x, gp.GaussianLikelihood(0.1), num_data=n, k=n)
    k = _kernel()(x).detach()
    prec = torch.linalg.inv(k) + torch.eye(n) / 0.1  # exact posterior precision of f(X)
    post_cov = torch.linalg.inv(prec)
    post_mean = post_cov @ y / 0.1
    # mean-field VI on a Gaussian target: exact means, variances 1 / diag(precision)
    with torch.no_grad():
        model.q_loc.copy_(post_mean)
        model.q_scale.copy_(prec.diagonal().rsqrt())
    elbo = model.full_data_elbo(x, y)
    log_z = gp.ExactGP(_kernel(), noise=0.1).log_marginal_likelihood(x, y)
    q = torch.distributions.MultivariateNormal(post_mean, torch.diag(1 / prec.diagonal()))
    post = torch.distributions.MultivariateNormal(post_mean, post_cov)
    gap = torch.distributions.kl_divergence(q, post)  # ELBO = log p(y) - KL(q || posterior)
    assert abs(float(elbo.detach() - (log_z - gap).detach())) < 1e-7
    elbo.backward()
    for p in model.variational_parameters():  # |dELBO/dq| ~ N / noise = 200 away from it
        assert float(p.grad.abs().max()) < 1e-6
    with torch.no_grad():
        m_exact, _ = gp.ExactGP(_kernel(), noise=0.1).predict(x, y, xs)
        torch.testing.assert_close(model.predict(xs)[0], m_exact, rtol=0, atol=1e-7)
        # a batch of indices (Z = X) is the same bound as the inputs themselves
        by_index = model.full_data_elbo(torch.arange(n), y)
        assert abs(float(by_index - elbo.detach())) < 1e-7


def _vecchia_precision(z, k, kernel):
    """The precision (I - B)^T F^-1 (I - B) of Vecchia's prior, built with numpy from brute-force neighbours."""
    zn = z.numpy()
    kz = kernel(z).detach().numpy()
    m = len(zn)
    b_mat, f = np.zeros((m, m)), np.zeros(m)
    for j in range(m):
        prev = np.argsort(((zn[:j] - zn[j]) ** 2).sum(-1))[:k] if j else np.array([], dtype=int)
        if len(prev):
            coef = np.linalg.solve(kz[np.ix_(prev, prev)], kz[prev, j])
            b_mat[j, prev] = coef
            f[j] = kz[j, j] - kz[j, prev] @ coef
        else:
            f[j] = kz[j, j]
    eye = np.eye(m)
    return (eye - b_mat).T @ np.diag(1 / f) @ (eye - b_mat)


def test_kl_with_few_neighbours_is_the_kl_to_vecchias_dense_prior():
    z = torch.rand(14, 2) * 3
    model = NNGP(_kernel(), z, gp.BernoulliLogit(), num_data=10, k=3)
    _randomize(model)
    prec = torch.from_numpy(_vecchia_precision(z, 3, _kernel()))
    prior = torch.distributions.MultivariateNormal(torch.zeros(14), precision_matrix=prec)
    q = torch.distributions.MultivariateNormal(model.q_loc.detach(), torch.diag(model.q_scale.detach() ** 2))
    want = torch.distributions.kl_divergence(q, prior)
    torch.testing.assert_close(model.kl().detach(), want, rtol=RTOL, atol=0)


def test_neighbour_search_matches_numpy_in_chunks(monkeypatch):
    monkeypatch.setattr(nngp, "_CHUNK", 50)  # force many chunks
    z = torch.rand(40, 3)
    q = torch.rand(17, 3)
    got = nngp.nearest_neighbours(q, z, 5).numpy()
    d = ((q.numpy()[:, None] - z.numpy()[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(got, np.argsort(d, axis=1)[:, :5])
    seq = nngp.sequential_neighbours(z, 4).numpy()
    dz = ((z.numpy()[:, None] - z.numpy()[None]) ** 2).sum(-1)
    for j in range(40):
        want = np.argsort(dz[j, :j])[:4]
        np.testing.assert_array_equal(seq[j, : len(want)], want)
        assert (seq[j, len(want) :] == -1).all()


def test_minibatch_kl_estimates_average_to_the_kl_and_the_model_trains():
    x, y = _data(60)
    model = NNGP(_kernel(), x[torch.randperm(60)], gp.GaussianLikelihood(0.1), num_data=60, k=4, kl_batch_size=12)
    _randomize(model)
    with torch.no_grad():
        parts = [model.kl_terms(j).sum() * 5 for j in torch.randperm(60).split(12)]
        torch.testing.assert_close(torch.stack(parts).mean(), model.kl(), rtol=1e-12, atol=0)
    out = model((x[:16], y[:16]))
    assert out.bound.shape == (16,) and out.loss.dim() == 0
    before = float(model.full_data_elbo(x, y))
    vt.fit(model, (x, y), steps=30, batch_size=20, lr=0.05)
    assert float(model.full_data_elbo(x, y)) > before


def test_bad_input_raises():
    x, y = _data()
    lik = gp.GaussianLikelihood(0.1)
    for bad in (0, 8, 2.5):
        with pytest.raises(ValueError, match="k must be an integer"):
            NNGP(_kernel(), x[:7], lik, num_data=30, k=bad)
    with pytest.raises(ValueError, match="num_data must be a positive integer"):
        NNGP(_kernel(), x[:7], lik, num_data=0)
    with pytest.raises(ValueError, match="kl_batch_size"):
        NNGP(_kernel(), x[:7], lik, num_data=30, k=3, kl_batch_size=99)
    model = NNGP(_kernel(), x[:7], lik, num_data=30, k=3)
    with pytest.raises(ValueError, match="inducing indices must lie in"):
        model((torch.tensor([0, 7]), y[:2]))
    with pytest.raises(ValueError, match="X has D = 3 columns"):
        model((torch.rand(4, 3), y[:4]))
    with pytest.raises(TypeError, match="dtype"):
        model((x.float(), y.float()))
    with pytest.raises(ValueError, match="support"):
        NNGP(_kernel(), x[:7], gp.BernoulliLogit(), num_data=30, k=3)((x, y))
