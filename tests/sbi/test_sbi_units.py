"""Unit checks of vitorch.sbi: the atomic APT loss and the Fisher penalty against their
definitions, permutation invariance of the set embedding, shapes, support, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vitorch.sbi import (
    NPE,
    DeepSetEmbedding,
    atomic_log_prob,
    box_uniform,
    c2st,
    contrastive_indices,
    expected_coverage,
    sbc_ranks,
    sbc_test,
    sequential_npe,
    simulate,
)


def _npe(prior=None, x_shape=(3,), **kw):
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2)) if prior is None else prior
    npe = NPE(prior, x_shape, transforms=2, hidden=(8, 8), **kw)
    theta = prior.sample((50,))
    npe.set_standardization(theta, torch.randn(50, *x_shape) * 2 + 1)
    return npe


def test_atomic_loss_equals_its_definition_on_a_tiny_batch():
    prior = box_uniform([-1.0, -2.0], [1.0, 3.0])
    npe = _npe(prior)
    npe.loss_kind, npe.num_atoms = "atomic", 3
    theta, x = prior.sample((3,)), torch.randn(3, 3)
    out = npe((theta, x))
    # Definition (Greenberg et al. 2019, eq. 4): with every other row as an atom,
    # log [ (q(theta_i|x_i)/p(theta_i)) / sum_j q(theta_j|x_i)/p(theta_j) ].
    want = []
    for i in range(3):
        r = torch.stack([npe.log_prob(theta[j], x[i]) - prior.log_prob(theta[j]) for j in range(3)])
        want.append(r[i] - torch.logsumexp(r, 0))
    torch.testing.assert_close(out.bound, torch.stack(want).detach())
    torch.testing.assert_close(out.loss, -torch.stack(want).mean())
    assert bool((out.bound <= 0).all())


def test_atomic_log_prob_with_a_flat_ratio_is_log_one_over_atoms():
    # q proportional to p on the atoms: every atom equally likely, log(1/A).
    lp = torch.randn(4, 6)
    torch.testing.assert_close(atomic_log_prob(lp + 0.7, lp), torch.full((6,), -torch.log(torch.tensor(4.0))))


def test_contrastive_indices_never_pick_their_own_row(generator):
    idx = contrastive_indices(7, 5, generator)
    assert idx.shape == (7, 4)
    assert not bool((idx == torch.arange(7)[:, None]).any())
    assert all(len(set(row.tolist())) == 4 for row in idx)


def test_fisher_penalty_is_the_squared_score_in_x():
    npe = _npe()
    theta, x = npe.prior.sample((5,)), torch.randn(5, 3)
    plain = npe((theta, x)).loss
    npe.fisher_penalty = 0.3
    penalized = npe((theta, x)).loss
    x_std = npe.x_norm(x)
    # grad of log q(theta_i | x_i) in the z-scored x_i, row by row through autograd.functional.
    scores = [
        torch.autograd.functional.jacobian(lambda v, t=theta[i]: npe.log_prob_given(t, npe._embed(v)), x_std[i])
        for i in range(5)
    ]
    trace = torch.stack([s.pow(2).sum() for s in scores]).mean()
    torch.testing.assert_close(penalized - plain, 0.3 * trace)
    npe.eval()  # evaluation reports the likelihood alone
    torch.testing.assert_close(npe((theta, x)).loss, plain)


def test_deepset_posterior_ignores_the_order_of_observations():
    emb = DeepSetEmbedding(2, out_features=4, hidden=(8,), latent_features=8)
    npe = _npe(x_shape=(6, 2), embedding=emb)
    x = torch.randn(3, 6, 2)
    theta = torch.randn(3, 2)
    perm = torch.randperm(6)
    torch.testing.assert_close(npe.log_prob(theta, x), npe.log_prob(theta, x[:, perm]))


def test_posterior_shapes_support_and_round_trip():
    prior = box_uniform([0.0, 0.0], [1.0, 5.0])
    npe = _npe(prior)
    q = npe.posterior(torch.randn(4, 3))
    assert q.batch_shape == (4,) and q.event_shape == (2,)
    theta, log_q = q.rsample_and_log_prob((100,))
    assert theta.shape == (100, 4, 2) and log_q.shape == (100, 4)
    assert bool(prior.support.check(theta).all())
    torch.testing.assert_close(q.log_prob(theta), log_q, rtol=1e-8, atol=1e-6)
    with pytest.raises(ValueError, match="support"):
        q.log_prob(torch.tensor([[2.0, 1.0]]).expand(4, 2))


def test_c2st_equal_samples_near_half_and_shifted_near_one():
    x = torch.randn(500, 2)
    y = torch.randn(500, 2)
    # 1000 held-out predictions: s.e. of an accuracy near 0.5 is sqrt(0.25 / 1000) = 0.016; 5.2 s.e.
    assert abs(c2st(x, y) - 0.5) < 5.2 * 0.0159
    shifted = y + torch.tensor([4.0, 0.0])
    # Bayes accuracy Phi(2) = 0.977 for a shift of 4 standard deviations; s.e. 0.005.
    acc = c2st(x, shifted)
    assert 0.977 - 5.2 * 0.0048 - 0.02 < acc <= 1.0


def test_sbc_test_accepts_uniform_ranks_and_rejects_peaked_ones(generator):
    uniform = torch.randint(0, 100, (400, 3), generator=generator)
    assert sbc_test(uniform, 99, level=1e-4).passed
    peaked = torch.full((400, 3), 50)
    assert not sbc_test(peaked, 99, level=1e-4).passed


def test_expected_coverage_of_the_exact_posterior_is_nominal():
    # theta ~ N(0, 1), x = theta + N(0, 1): exact posterior N(x / 2, 1 / 2) (as a 2-D product).
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta, x = simulate(prior, lambda t: t + torch.randn_like(t), 400)
    exact = lambda xs: MultivariateNormal(xs / 2, 0.5 * torch.eye(2))  # noqa: E731
    levels, cov = expected_coverage(exact, theta, x, num_posterior_samples=500)
    # Binomial s.e. sqrt(c(1-c)/N) plus 1/L for the finite number of posterior draws.
    se = (levels * (1 - levels) / 400).sqrt()
    assert bool(((cov - levels).abs() < 5.2 * se + 1 / 500).all())
    narrow = lambda xs: MultivariateNormal(xs / 2, 0.1 * torch.eye(2))  # noqa: E731
    assert bool((expected_coverage(narrow, theta, x, num_posterior_samples=500)[1] < levels).all())


def test_bad_input_is_named():
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(TypeError, match="prior"):
        simulate("normal", lambda t: t, 10)
    with pytest.raises(TypeError, match="simulator"):
        simulate(prior, 3, 10)
    with pytest.raises(ValueError, match="n must be"):
        simulate(prior, lambda t: t, 0)
    with pytest.raises(ValueError, match="one simulation per parameter row"):
        simulate(prior, lambda t: t[:3], 10)
    with pytest.raises(ValueError, match="non-finite"):
        simulate(prior, lambda t: t / 0.0, 10)
    with pytest.raises(ValueError, match="event shape"):
        NPE(torch.distributions.Normal(0.0, 1.0), (2,))
    with pytest.raises(ValueError, match="high > low"):
        box_uniform([0.0, 1.0], [1.0, 1.0])
    npe = NPE(prior, (3,), transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="x must"):
        npe.fit(torch.zeros(10, 2), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="theta must"):
        npe.fit(torch.zeros(10, 3), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="num_atoms"):
        npe.fit(torch.zeros(10, 2), torch.zeros(10, 3), loss="atomic", num_atoms=1)
    with pytest.raises(ValueError, match="compile"):
        npe.fit(torch.zeros(10, 2), torch.zeros(10, 3), compile="yes")
    with pytest.raises(ValueError, match="flow must be"):
        NPE(prior, (3,), flow="realnvp")
    with pytest.raises(ValueError, match="x must have shape"):
        npe.posterior(torch.zeros(4, 2))
    box = box_uniform([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="outside the prior's support"):
        NPE(box, (3,), transforms=1, hidden=(8,)).fit(torch.full((10, 2), 2.0), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="same D"):
        c2st(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="ranks must lie"):
        sbc_test(torch.full((10, 2), 120), 99)
    with pytest.raises(ValueError, match="x_o must have shape"):
        sequential_npe(npe, lambda t: t, torch.zeros(2), rounds=2, simulations_per_round=10)
    with pytest.raises(ValueError, match="batch shape"):
        sbc_ranks(lambda xs: prior, torch.zeros(5, 2), torch.zeros(5, 3))


@pytest.mark.slow
def test_compiled_training_follows_the_eager_trajectory():
    """``compile=True`` changes how the step runs, not what it computes: from the same
    weights, split and batch order, the per-step losses of five steps agree with eager
    training.  Inductor reorders float32 arithmetic (relative rounding ~1e-6 per
    operation), and five Adam steps at lr 1e-3 move the weights by ~5e-3, so a relative
    gap above 1e-4 means a different computation, not rounding."""
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    torch.manual_seed(7)
    theta = prior.sample((900,))
    x = torch.cat([theta, theta.pow(2)], -1) + 0.1 * torch.randn(900, 4)
    torch.manual_seed(8)
    eager = NPE(prior, (4,), transforms=2, hidden=(16, 16))
    compiled = NPE(prior, (4,), transforms=2, hidden=(16, 16))
    compiled.load_state_dict(eager.state_dict())
    runs = [
        npe.fit(theta, x, batch_size=200, lr=1e-3, max_epochs=1, seed=9, compile=flag)
        for npe, flag in ((eager, False), (compiled, True))
    ]
    losses = [torch.tensor([r["loss"] for r in h.steps]) for h in runs]
    assert len(losses[0]) == len(losses[1]) == 5  # four full batches and one of 10
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)


def test_softplus_affine_inverts_and_its_log_derivative_is_the_jacobian_diagonal():
    from vitorch.sbi.flows import SoftplusAffine, build_flow

    m = SoftplusAffine()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    params = 3 * torch.randn(5, 3, 2, generator=gen, dtype=torch.float64)
    y, ladj = m(x, params)
    x_back, ladj_back = m.inverse(y, params)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ladj_back, -ladj)
    # Elementwise map: d y_ij / d x_ij is the whole Jacobian; compare its log with ladj.
    (dy,) = torch.autograd.grad(m(x.requires_grad_(True), params)[0].sum(), x)
    torch.testing.assert_close(dy.log(), ladj)
    # The scale never falls below eps, however negative raw is.
    _, floor = m(x[:1], torch.full((1, 3, 2), -200.0, dtype=torch.float64))
    torch.testing.assert_close(floor, torch.full((1, 3), torch.tensor(1e-3).log().item(), dtype=torch.float64))
    assert isinstance(build_flow("maf", 3, 2).transforms[0].transformer, SoftplusAffine)
    with pytest.raises(ValueError, match="eps"):
        SoftplusAffine(eps=0.0)
