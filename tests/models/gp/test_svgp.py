"""SVGP: at its optimal q it equals the collapsed bound; with Z = X it predicts like the exact GP;
minibatch scaling; natural gradients; families; float32; bad input."""

from __future__ import annotations

import pytest
import torch

import vitorch as vt
from vitorch.families import DiagNormal
from vitorch.models import gp

# Identities between two float64 routes to the same number (Titsias' bound, exact
# predictions): rounding is ~1e-12 here; 1e-6 is the brief's tolerance.
TOL = 1e-6


def _data(n=40):
    x = torch.rand(n, 2) * 3
    y = torch.sin(2 * x).sum(-1) + 0.1 * torch.randn(n)
    return x, y


def _svgp(k, z, n, **kw):
    return gp.SVGP(k, z, likelihood=gp.GaussianLikelihood(noise=0.1), num_data=n, **kw)


@pytest.mark.parametrize("whiten", [True, False])
def test_at_optimal_q_equals_collapsed_bound(whiten):
    x, y = _data()
    k = gp.RBF(torch.tensor([0.8, 1.3]), 1.2)
    z = torch.rand(8, 2) * 3
    sgpr = gp.SGPR(k, z, noise=0.1)
    with torch.no_grad():
        collapsed = sgpr.full_data_elbo(x, y)
        by_step = _svgp(k, z, 40, whiten=whiten)
        by_step.natural_gradient_step(x, y, lr=1.0)  # one unit step on the full data lands on the optimum
        by_set = _svgp(k, z, 40, whiten=whiten)
        by_set.set_q(sgpr.optimal_q(x, y, whiten=whiten))
        assert abs(float(by_step.full_data_elbo(x, y) - collapsed)) < TOL
        assert abs(float(by_set.full_data_elbo(x, y) - collapsed)) < TOL
    # and the optimum is stationary: q's gradient vanishes there (scale: |dELBO/dq| ~ N / noise = 400)
    by_set.full_data_elbo(x, y).backward()
    for p in by_set.variational_parameters():
        assert float(p.grad.abs().max()) < 1e-6


def test_predictions_match_exact_gp_when_z_equals_x():
    x, y = _data(30)
    xs = torch.rand(7, 2) * 3
    k = gp.Matern52(0.9, 1.1)
    with torch.no_grad():
        m_e, v_e = gp.ExactGP(k, noise=0.1).predict(x, y, xs)
        model = _svgp(k, x, 30)
        model.natural_gradient_step(x, y)
        m_s, v_s = model.predict(xs)
        ym, yv = model.predict_y(xs)
    assert torch.allclose(m_s, m_e, atol=TOL) and torch.allclose(v_s, v_e, atol=TOL)
    assert torch.allclose(yv, v_s + 0.1)


def test_minibatch_estimates_average_to_the_full_batch_bound():
    x, y = _data(40)
    model = _svgp(gp.RBF(), x[:6], 40)
    with torch.no_grad():
        model.q_loc.normal_()
        full = model.full_data_elbo(x, y)
        perm = torch.randperm(40)
        batches = [model.full_data_elbo(x[i], y[i]) for i in perm.split(8)]
    # (N / B) sum_batch scaling makes the mean over a partition exactly the full-data bound
    assert torch.allclose(torch.stack(batches).mean(), full, rtol=1e-12)


def test_natural_gradient_steps_converge_geometrically():
    x, y = _data()
    z = x[:8]
    model = _svgp(gp.RBF(0.8), z, 40)
    with torch.no_grad():
        target = gp.SGPR(gp.RBF(0.8), z, noise=0.1).full_data_elbo(x, y)
        gaps = []
        for _ in range(25):
            model.natural_gradient_step(x, y, lr=0.5)
            gaps.append(float(target - model.full_data_elbo(x, y)))
    # natural parameters contract by (1 - lr) per step: the gap shrinks to rounding after 25 halvings
    assert all(g >= -TOL for g in gaps) and gaps[-1] < TOL and gaps[-1] < gaps[0]


def test_diagonal_family_is_below_the_optimum_and_trains():
    x, y = _data()
    z = x[:8]
    model = _svgp(gp.RBF(0.8), z, 40, family=DiagNormal)
    assert isinstance(model.q(), DiagNormal)
    with torch.no_grad():
        best = gp.SGPR(gp.RBF(0.8), z, noise=0.1).full_data_elbo(x, y)
        assert float(model.full_data_elbo(x, y)) <= float(best) + TOL
    model.full_data_elbo(x, y).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_whitened_kl_matches_its_closed_form():
    model = _svgp(gp.RBF(), torch.rand(5, 2), 10)
    with torch.no_grad():
        model.q_loc.normal_()
        model.q_offdiag.normal_()
        q = model.q()
        s = q.covariance_matrix
        want = 0.5 * (s.trace() + q.loc @ q.loc - 5 - torch.logdet(s))
        assert torch.allclose(model.kl(), want, rtol=1e-10)


@pytest.mark.parametrize("whiten", [True, False])
def test_every_parameter_gets_a_gradient(whiten):
    x, y = _data()
    model = _svgp(gp.RBF(torch.ones(2)), x[:5] + 0.05, 40, whiten=whiten, mean=gp.ConstantMean(0.1))
    with torch.no_grad():
        model.q_loc.normal_()
        model.q_offdiag.normal_(std=0.1)
    model.full_data_elbo(x[:16], y[:16]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()), name


def test_float32_bound_matches_float64():
    x, y = _data()
    z = x[:10]
    with torch.no_grad():
        b64 = _svgp(gp.RBF(0.8), z, 40, jitter=1e-6).full_data_elbo(x, y)
        torch.set_default_dtype(torch.float32)  # the fixture restores float64
        m32 = _svgp(gp.RBF(0.8), z.float(), 40)
        b32 = m32.full_data_elbo(x.float(), y.float())
    # same jitter (float32 default 1e-6); float32 rounding through M = 10: ~1e-5 relative
    assert b32.dtype == torch.float32 and abs(float(b32) - float(b64)) < 1e-4 * abs(float(b64))


def test_bad_input_raises():
    x, y = _data()
    lik = gp.GaussianLikelihood(0.1)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_data must be a positive integer"):
            gp.SVGP(gp.RBF(), x[:4], lik, num_data=bad)
    with pytest.raises(ValueError, match="family must be FullRankNormal or DiagNormal"):
        gp.SVGP(gp.RBF(), x[:4], lik, num_data=40, family=torch.distributions.Normal)
    model = gp.SVGP(gp.RBF(), x[:4], lik, num_data=40)
    xn = x.clone()
    xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="X must be finite"):
        model.full_data_elbo(xn, y)
    with pytest.raises(ValueError, match="lr must lie in"):
        model.natural_gradient_step(x, y, lr=1.5)
    clf = gp.SVGP(gp.RBF(), x[:4], gp.BernoulliLogit(), num_data=40)
    with pytest.raises(ValueError, match=r"support \{0, 1\}"):
        clf.full_data_elbo(x, y)
    with pytest.raises(ValueError, match="needs a GaussianLikelihood"):
        clf.natural_gradient_step(x, (y > 0).double())


def test_sign_of_a_column_of_q_root_does_not_matter():
    x, y = _data()
    model = _svgp(gp.RBF(0.8), x[:6], 40)
    with torch.no_grad():
        model.q_loc.normal_()
        model.q_offdiag.normal_(std=0.3)
        before = model.full_data_elbo(x, y)
        model.q_diag[2] *= -1  # negate column 2 of the root: S = R R^T is unchanged
        model.q_offdiag[:, 2] *= -1
        after = model.full_data_elbo(x, y)
        q = model.q()
    assert torch.allclose(before, after, rtol=1e-12)
    assert bool((q.scale_tril.diagonal() > 0).all())  # the family always sees a proper Cholesky factor


def test_forward_is_the_per_datum_share_of_the_full_data_elbo():
    x, y = _data()
    model = _svgp(gp.RBF(0.8), x[:6], 40)
    with torch.no_grad():
        model.q_loc.normal_()
    out = model((x[:8], y[:8]))
    mean, var = model.predict(x[:8])
    want = gp.GaussianLikelihood(0.1).expected_log_prob(y[:8], mean, var) - model.kl() / 40
    assert out.log_w is None and out.z is None
    torch.testing.assert_close(out.bound, want.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out.loss, -model.full_data_elbo(x[:8], y[:8]) / 40, rtol=1e-12, atol=0)
    with pytest.warns(DeprecationWarning, match="renamed full_data_elbo"):
        old = model.elbo(x[:8], y[:8])
    assert torch.equal(old, model.full_data_elbo(x[:8], y[:8]))


def test_predict_proba_gives_class_probabilities_for_classifiers_only():
    x, y = _data()
    clf = gp.SVGP(gp.RBF(), x[:4], gp.BernoulliProbit(), num_data=40)
    with torch.no_grad():
        clf.q_loc.normal_()
        p = clf.predict_proba(x)
        mean, var = clf.predict(x)
    torch.testing.assert_close(p, torch.special.ndtr(mean / torch.sqrt(1 + var)), rtol=1e-12, atol=0)
    assert torch.equal(p, clf.predict_y(x)[0])
    with pytest.raises(TypeError, match="needs a classification likelihood.*GaussianLikelihood"):
        _svgp(gp.RBF(), x[:4], 40).predict_proba(x)


def test_inputs_of_the_wrong_kind_dtype_or_size_raise_naming_them():
    x, y = _data()
    model = _svgp(gp.RBF(torch.ones(2)), x[:4], 40)
    with pytest.raises(TypeError, match=r"X must be a torch.Tensor; got numpy.ndarray"):
        model((x.numpy(), y))
    with pytest.raises(TypeError, match=r"y must be a torch.Tensor; got numpy.ndarray"):
        model.full_data_elbo(x, y.numpy())
    with pytest.raises(TypeError, match=r"X has dtype torch.float32 but the model computes in torch.float64"):
        model.predict(x.float())
    with pytest.raises(TypeError, match=r"X has dtype torch.int64"):
        model((x.long(), y))
    with pytest.raises(TypeError, match=r"batch = \(X \[B, D\], y \[B\]\); got Tensor"):
        model(x)
    with pytest.raises(ValueError, match="X is empty"):
        model((x[:0], y[:0]))
    # an ARD kernel whose lengthscales do not match the inducing inputs, or the data
    with pytest.raises(ValueError, match=r"lengthscale has shape \(3,\).*inducing inputs Z has D = 2"):
        _svgp(gp.RBF(torch.ones(3)), x[:4], 40)
    with pytest.raises(ValueError, match=r"X has D = 3 columns but the inducing inputs Z have D = 2"):
        model.predict(torch.rand(5, 3))
    # a float32 model: float64 data (and float64 inducing inputs) are refused by name
    torch.set_default_dtype(torch.float32)  # the fixture restores float64
    k32 = gp.RBF(torch.ones(2))
    with pytest.raises(TypeError, match=r"Z have dtype torch.float64 but the kernel.s .* torch.float32"):
        gp.SVGP(k32, x[:4], gp.GaussianLikelihood(0.1), num_data=40)
    m32 = gp.SVGP(k32, x[:4].float(), gp.GaussianLikelihood(0.1), num_data=40)
    with pytest.raises(TypeError, match=r"X has dtype torch.float64 but the model computes in torch.float32"):
        m32((x, y.float()))
    with pytest.raises(TypeError, match=r"y has dtype torch.float64"):
        m32((x.float(), y))
    assert m32((x.float(), y.float())).loss.dtype == torch.float32


@pytest.mark.parametrize("whiten", [True, False])
def test_both_kernel_backends_give_the_same_bound_and_gradients(whiten):
    x, y = _data()
    model = _svgp(gp.RBF(torch.tensor([0.8, 1.3])), x[:6] + 0.05, 40, whiten=whiten, mean=gp.ConstantMean(0.1))
    with torch.no_grad():
        model.q_loc.normal_()
        model.q_offdiag.normal_(std=0.1)
    results = []
    for name in ("fused", "reference"):
        model.zero_grad()
        with vt.kernels.backend(name):
            out = model((x[:16], y[:16]))
        out.loss.backward()
        results.append((out.bound, [p.grad.clone() for p in model.parameters()]))
    (b1, g1), (b2, g2) = results
    # float64, M = 6 with cond(K_mm) modest: the two routes (inverse factor vs solves) agree to ~1e-13;
    # 1e-10 leaves room for the conditioning of other draws
    torch.testing.assert_close(b1, b2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
