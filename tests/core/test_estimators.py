"""Estimators against exact gradients and hand-derived formulas on the linear-Gaussian model.

Replicates are vectorized: each of R replicates is one batch element with its own
copy of the parameters, so one ``backward`` yields R independent gradient draws
(the loss averages over the batch, hence the factor ``-R``).  Every stochastic
assertion compares a mean with its target within ``Z`` standard errors estimated
from the same draws (``Z = 5.2``: two-sided p ~ 2e-7 each, see conftest).
"""

from __future__ import annotations

import pytest
import torch

import vitorch as vt

from conftest import Z
from core import lingauss as lg

O, E = vt.objectives, vt.estimators
D = 2
X0 = torch.tensor([0.7, -1.2], dtype=torch.float64)
M0 = torch.tensor([0.1, -0.3], dtype=torch.float64)  # guide mean, away from the posterior's
S0 = torch.tensor([0.9, 0.6], dtype=torch.float64)  # guide scale
T0 = torch.tensor([0.2, 0.5], dtype=torch.float64)  # model parameter theta


def _params(R: int, m0=M0, s0=S0, t0=T0):
    m = m0.expand(R, D).clone().requires_grad_(True)
    log_s = s0.log().expand(R, D).clone().requires_grad_(True)
    theta = t0.expand(R, D).clone().requires_grad_(True)
    return m, log_s, theta


def _draws(objective, estimator, K: int, R: int, x=X0, **kw):
    """``[R, 3 * D]`` gradient draws of the bound wrt (m, log s, theta)."""
    m, log_s, theta = _params(R, **kw)
    q = vt.DiagNormal(m, log_s.exp())
    out = vt.loss(lg.log_joint(x.expand(R, D), theta), q, num_particles=K, objective=objective, estimator=estimator)
    grads = torch.autograd.grad(out.loss, [m, log_s, theta])
    return -R * objective.sign * torch.cat(grads, -1)


def _exact_elbo_grad(x=X0, m0=M0, s0=S0, t0=T0):
    m, log_s, theta = (t.clone().requires_grad_(True) for t in (m0, s0.log(), t0))
    return torch.cat(torch.autograd.grad(lg.exact_elbo(x, theta, m, log_s.exp()), [m, log_s, theta]))


def _assert_mean(draws: torch.Tensor, target: torch.Tensor, what: str):
    mean, se = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    bad = (mean - target).abs() > Z * se + 1e-12
    assert not bad.any(), f"{what}: mean {mean[bad]} target {target[bad]} se {se[bad]}"


def _assert_same_mean(a: torch.Tensor, b: torch.Tensor, what: str):
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    bad = (a.mean(0) - b.mean(0)).abs() > Z * se + 1e-12
    assert not bad.any(), f"{what}: {a.mean(0)[bad]} vs {b.mean(0)[bad]} (se {se[bad]})"


ELBO_ESTIMATORS = {
    "reparam": E.reparam,
    "stl": E.stl,
    "dreg": E.dreg,
    "score": E.score(),
    "vimco": E.vimco,
}


@pytest.mark.parametrize("name", list(ELBO_ESTIMATORS))
@pytest.mark.parametrize("K", [1, 4])
def test_elbo_gradient_unbiased(name, K):
    if name == "vimco" and K == 1:
        pytest.skip("vimco needs K >= 2 (tested in test_invalid_pairs)")
    R = 40_000 if name in ("score", "vimco") else 4_000
    draws = _draws(O.elbo, ELBO_ESTIMATORS[name], K, R)
    _assert_mean(draws, _exact_elbo_grad(), f"elbo/{name}/K={K}")


@pytest.mark.parametrize("baseline", ["moving_average", "learned"])
def test_score_with_baseline_unbiased_and_reduces_variance(baseline):
    # The baseline is fixed at a value near E[log w] before the measured draws: a
    # baseline must not depend on the particles it weights, only on past ones.
    R, K = 40_000, 2
    target = lg.exact_elbo(X0, T0, M0, S0).item()
    if baseline == "moving_average":
        b = E.MovingAverageBaseline(decay=0.5)
        b.observe(torch.tensor([target]), None)
    else:
        b = E.LearnedBaseline()
        with torch.no_grad():
            b.constant.fill_(target)
    draws = _draws(O.elbo, E.score(baseline=b), K, R)
    plain = _draws(O.elbo, E.score(), K, R)
    _assert_mean(draws, _exact_elbo_grad(), f"score+{baseline}")
    # The guide's gradient variance falls by a large factor (the signal's mean is removed;
    # the model's, columns 2D:, does not involve the baseline).  0.5 is far outside the
    # sampling spread of a variance ratio at R = 40,000 (relative se ~ 1 %).
    assert (draws.var(0)[: 2 * D] < 0.5 * plain.var(0)[: 2 * D]).all()


IWAE_SET = {
    "dreg": E.dreg,
    "score": E.score(),
    "vimco": E.vimco,
}


@pytest.mark.parametrize("name", list(IWAE_SET))
@pytest.mark.parametrize(
    ("objective", "K"),
    [(O.iwae, 5), (O.miwae(2), 4), (O.ciwae(0.3), 3), (O.renyi(0.5), 4), (O.renyi(2.0), 3), (O.cubo(2), 4)],
    ids=str,
)
def test_multisample_estimators_agree_with_reparam(name, objective, K):
    """E[IWAE_K] has no closed-form gradient; reparameterization is unbiased by construction."""
    R = 60_000 if name in ("score", "vimco") else 8_000
    ref = _draws(objective, E.reparam, K, 8_000)
    draws = _draws(objective, IWAE_SET[name], K, R)
    _assert_same_mean(draws, ref, f"{objective.name}/{name}")


def test_the_comparison_has_power_stl_on_iwae_is_biased():
    """The test above can see a bias of the size that matters: STL on IWAE (which vt.loss
    refuses) differs detectably from the reparameterization gradient."""
    R, K = 8_000, 5
    m, log_s, theta = _params(R, m0=torch.tensor([1.5, -1.5]), s0=torch.tensor([0.4, 1.4]))
    q = vt.DiagNormal(m, log_s.exp())
    z = q.rsample((K,))
    log_w = lg.log_joint(X0.expand(R, D), theta)(z) - vt.stopped(q).log_prob(z)
    stl_iwae = torch.cat(torch.autograd.grad(O.iwae(log_w).sum(), [m, log_s]), -1)
    ref = _draws(O.iwae, E.reparam, K, R, m0=torch.tensor([1.5, -1.5]), s0=torch.tensor([0.4, 1.4]))[:, : 2 * D]
    se = (stl_iwae.var(0) / R + ref.var(0) / R).sqrt()
    assert ((stl_iwae.mean(0) - ref.mean(0)).abs() > Z * se).any()


@pytest.mark.parametrize(
    ("objective", "estimator", "K"),
    [(O.elbo, E.stl, 1), (O.elbo, E.stl, 7), (O.iwae, E.dreg, 7), (O.miwae(7), E.dreg, 7)],
)
def test_zero_variance_at_the_posterior(objective, estimator, K):
    R = 64
    mu, tau = lg.posterior(X0, T0)
    m, log_s, theta = _params(R, m0=mu, s0=tau)
    q = vt.DiagNormal(m, log_s.exp())
    out = vt.loss(lg.log_joint(X0.expand(R, D), theta), q, K, objective, estimator)
    g_m, g_s = torch.autograd.grad(out.loss, [m, log_s])
    assert g_m.abs().max() < 1e-12 and g_s.abs().max() < 1e-12
    assert torch.allclose(out.bound, lg.log_evidence(X0, T0).expand(R), atol=1e-12)


def test_reparam_is_not_zero_variance_at_the_posterior():
    mu, tau = lg.posterior(X0, T0)
    draws = _draws(O.elbo, E.reparam, 1, 256, m0=mu, s0=tau)
    assert draws[:, : 2 * D].std(0).min() > 0.1


def _snr_b(estimator, K: int, R: int = 1000, Dz: int = 20) -> float:
    """Rainforth et al. (2018)'s toy: z ~ N(mu, I), x | z ~ N(z, I), q(z|x) = N(Ax + b, 2/3 I).

    Returns the mean over dimensions of |E g| / sd(g) for the guide bias b's gradient.
    """
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(Dz, generator=gen)
    x = mu + 2**0.5 * torch.randn(Dz, generator=gen)
    a = 0.5 * torch.eye(Dz) + 0.01 * torch.randn(Dz, Dz, generator=gen)
    b0 = mu / 2 + 0.01 * torch.randn(Dz, generator=gen)
    b = b0.expand(R, Dz).clone().requires_grad_(True)
    q = vt.DiagNormal(x @ a.T + b, torch.full((R, Dz), (2 / 3) ** 0.5))
    out = vt.loss(lg.log_joint(x.expand(R, Dz), mu), q, K, O.iwae, estimator)
    (g,) = torch.autograd.grad(out.loss, [b])
    return (g.mean(0).abs() / g.std(0)).mean().item()


def test_dreg_snr_grows_with_K_where_iwae_reparam_shrinks():
    """Rainforth et al. (2018): the IWAE guide gradient's SNR falls as O(1/sqrt K);
    Tucker et al. (2019): DReG's rises.  Over K = 1 -> 100 theory predicts factors of
    about 0.1 and 10; the thresholds 0.5 and 2 sit far outside the SNR estimates'
    sampling error at R = 1000 (relative se of an SNR ~ 3 %, averaged over 20 dims)."""
    rep = [_snr_b(E.reparam, K) for K in (1, 100)]
    drg = [_snr_b(E.dreg, K) for K in (1, 100)]
    assert rep[1] < 0.5 * rep[0], rep
    assert drg[1] > 2.0 * drg[0], drg


def _manual_setup(K=6, B=3, seed=7):
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(seed))
    m = torch.randn(B, D).requires_grad_(True)
    log_s = (0.3 * torch.randn(B, D)).requires_grad_(True)
    theta = torch.randn(D).requires_grad_(True)
    return x, m, log_s, theta


@pytest.mark.parametrize("estimator", [E.reparam, E.dreg])
def test_piwae_groups_get_their_own_bounds(estimator):
    K, M = 6, 3
    x, m, log_s, theta = _manual_setup(K)
    torch.manual_seed(11)
    out = vt.loss(lg.log_joint(x, theta), vt.DiagNormal(m, log_s.exp()), K, O.piwae(M), estimator)
    got = torch.autograd.grad(out.loss, [m, log_s, theta])

    torch.manual_seed(11)
    q = vt.DiagNormal(m, log_s.exp())
    lj = lg.log_joint(x, theta)
    if estimator is E.reparam:
        z, log_q = q.rsample_and_log_prob((K,))
        guide_bound = O.miwae(M)(lj(z) - log_q).mean()
    else:  # DReG for MIWAE: sum_k sg(w~_group^2 / M) log w_k at stopped guide parameters
        z = q.rsample((K,))
        log_q = q.detach().log_prob(z)
        lw = lj(z) - log_q
        w = torch.softmax(lw.detach().reshape(M, K // M, -1), 1).reshape(K, -1)
        guide_bound = (w.pow(2) / M * lw).sum(0).mean()
    lw_model = lj(z.detach()) - log_q.detach()
    want_guide = torch.autograd.grad(guide_bound, [m, log_s])
    want_model = torch.autograd.grad(O.iwae(lw_model).mean(), [theta])
    for g, w in zip(got, [*want_guide, *want_model]):
        torch.testing.assert_close(g, -w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["reparam", "score"])
def test_vis_groups_get_their_own_gradients(form):
    K = 8
    x, m, log_s, theta = _manual_setup(K)
    est = E.reparam if form == "reparam" else E.score()
    torch.manual_seed(3)
    out = vt.loss(lg.log_joint(x, theta), vt.DiagNormal(m, log_s.exp()), K, O.vis(), est)
    got = torch.autograd.grad(out.loss, [m, log_s, theta])

    torch.manual_seed(3)
    q = vt.DiagNormal(m, log_s.exp())
    lj = lg.log_joint(x, theta)
    if form == "reparam":
        z, log_q = q.rsample_and_log_prob((K,))
        chi2 = torch.logsumexp(2 * (lj(z) - log_q), 0).mean()  # descended by the guide
        want_guide = torch.autograd.grad(chi2, [m, log_s])
    else:  # self-normalized: the guide descends log E w^2 along -sum_s w^_s grad log q(z_s)
        z = q.sample((K,))
        log_q = q.log_prob(z)
        w_hat = torch.softmax(2 * (lj(z) - log_q).detach(), 0)
        want_guide = torch.autograd.grad(-(w_hat * log_q).sum(0).mean(), [m, log_s])
    lw = lj(z.detach()) - log_q.detach()
    want_model = torch.autograd.grad(-O.iwae(lw).mean(), [theta])
    for g, w in zip(got, [*want_guide, *want_model]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_dreg_identity_iwae():
    """DReG's guide gradient is sum_k w~_k^2 d/dz[log p - log q_stop] dz/dphi (Tucker et al. eq. 7)."""
    K = 5
    x, m, log_s, theta = _manual_setup(K)
    torch.manual_seed(5)
    q = vt.DiagNormal(m, log_s.exp())
    out = vt.loss(lg.log_joint(x, theta), q, K, O.iwae, E.dreg)
    g_m, g_s = torch.autograd.grad(out.loss, [m, log_s])

    torch.manual_seed(5)
    eps = torch.randn(K, *m.shape)
    s = log_s.exp().detach()
    z = m.detach() + s * eps
    lw = lg.log_joint(x, theta.detach())(z) - vt.DiagNormal(m.detach(), s).log_prob(z)
    w2 = torch.softmax(lw, 0).pow(2).unsqueeze(-1)
    dlw_dz = (theta.detach() - z) + (x - z) + (z - m.detach()) / s**2  # d/dz [log p(x,z) - log q(z)]
    want_m = (w2 * dlw_dz).sum(0)
    want_s = (w2 * dlw_dz * eps * s).sum(0)  # dz/dlog s = eps * s
    B = m.shape[0]
    torch.testing.assert_close(g_m, -want_m / B, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_s, -want_s / B, rtol=1e-10, atol=1e-12)


def test_score_identity_elbo():
    """Score-function ELBO: sum_k (log w_k - 1) / K grad log q(z_k), z held fixed."""
    K = 4
    x, m, log_s, theta = _manual_setup(K)
    torch.manual_seed(9)
    q = vt.DiagNormal(m, log_s.exp())
    out = vt.loss(lg.log_joint(x, theta), q, K, O.elbo, E.score())
    g_m, g_s = torch.autograd.grad(out.loss, [m, log_s])

    torch.manual_seed(9)
    z = q.sample((K,))
    s = log_s.exp().detach()
    lw = lg.log_joint(x, theta.detach())(z) - q.log_prob(z).detach()
    u = (z - m.detach()) / s
    dlogq_dm, dlogq_dlogs = u / s, u.pow(2) - 1
    coef = ((lw - 1) / K).unsqueeze(-1)
    B = m.shape[0]
    torch.testing.assert_close(g_m, -(coef * dlogq_dm).sum(0) / B, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_s, -(coef * dlogq_dlogs).sum(0) / B, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator", [E.reparam, E.dreg, E.score(), E.vimco])
@pytest.mark.parametrize("objective", [O.elbo, O.iwae, O.ciwae(0.5), O.cubo(2), O.piwae(2)], ids=str)
def test_all_neg_inf_log_weights_give_zero_not_nan(objective, estimator):
    K, B = 4, 3
    m = torch.zeros(B, D, requires_grad=True)
    theta = torch.zeros(D, requires_grad=True)
    dead = torch.tensor([False, True, False])

    def log_joint(z):  # datum 1 lies outside the model's support
        lp = lg.log_joint(torch.zeros(B, D), theta)(z)
        return torch.where(dead, -torch.inf, lp)

    out = vt.loss(log_joint, vt.DiagNormal(m, torch.ones(B, D)), K, objective, estimator)
    assert torch.isfinite(out.loss)
    assert out.bound[1] <= -1e29 and torch.isfinite(out.bound).all()
    g_m, g_t = torch.autograd.grad(out.loss, [m, theta], allow_unused=True)
    assert torch.isfinite(g_m).all() and (g_m[1] == 0).all()
    assert g_t is None or torch.isfinite(g_t).all()


def test_invalid_pairs_list_every_reason_before_sampling():
    bern = torch.distributions.Independent(torch.distributions.Bernoulli(probs=torch.full((3, D), 0.5)), 1)
    calls = []

    def log_joint(z):
        calls.append(1)
        return z.sum(-1)

    with pytest.raises(ValueError) as err:
        vt.loss(log_joint, bern, num_particles=5, objective=O.miwae(2), estimator=E.dreg)
    msg = str(err.value)
    assert "rsample" in msg and "M=2 does not divide K=5" in msg and "Bernoulli" in msg
    assert not calls
    q = vt.DiagNormal(torch.zeros(D), torch.ones(D))
    for kwargs, needle in [
        (dict(num_particles=0), "K"),
        (
            dict(num_particles=4, objective=O.iwae, estimator=E.stl),
            "stl is unbiased only for a mean of per-particle terms",
        ),
        (dict(num_particles=1, estimator=E.vimco), "K >= 2"),
        (dict(num_particles=2, estimator=E.score), "score is a factory"),
        (dict(num_particles=2, objective=O.miwae), "miwae is a factory"),
        (dict(num_particles=2, objective=O.vis(), estimator=E.score(E.MovingAverageBaseline())), "no baseline"),
    ]:
        with pytest.raises(ValueError, match=needle):
            vt.loss(log_joint, q, **kwargs)
    assert not calls
    with pytest.raises(ValueError, match=r"\[K, \*batch\]"):
        vt.loss(lambda z: z, q, num_particles=3)


def test_same_seed_same_loss_and_gradients():
    def run():
        torch.manual_seed(123)
        x, m, log_s, theta = _manual_setup()
        out = vt.loss(lg.log_joint(x, theta), vt.DiagNormal(m, log_s.exp()), 5, O.iwae, E.dreg)
        return out.loss.detach(), torch.autograd.grad(out.loss, [m, log_s, theta])

    (l1, g1), (l2, g2) = run(), run()
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_baseline_state_round_trips():
    b = E.MovingAverageBaseline(0.9)
    b.observe(torch.tensor([1.0, 3.0]), None)
    b.observe(torch.tensor([5.0]), None)
    c = E.MovingAverageBaseline(0.9)
    c.load_state_dict(b.state_dict())
    assert torch.equal(c.value, b.value) and bool(c.initialized)
    assert abs(b.value.item() - (0.9 * 2.0 + 0.1 * 5.0)) < 1e-12


def test_learned_baseline_network_trains_toward_the_signal():
    B, K = 64, 2
    net = torch.nn.Linear(D, 1)
    base = E.LearnedBaseline(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x = torch.randn(B, D)
    q = vt.DiagNormal(torch.zeros(B, D), torch.ones(B, D))
    first = None
    for _ in range(200):
        out = vt.loss(lg.log_joint(x, torch.zeros(D)), q, K, O.elbo, E.score(base), context=x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        err = (base.predict(x, out.bound) - out.bound).pow(2).mean().item()
        first = first if first is not None else err
    assert err < 0.2 * first


@pytest.mark.parametrize("objective", [O.iwae, O.piwae(2), O.vis()], ids=str)
@pytest.mark.parametrize("estimator", [E.reparam, E.dreg, E.score()], ids=str)
def test_bounds_evaluate_under_no_grad(objective, estimator):
    if objective.name == "vis" and estimator is E.dreg:
        pytest.skip("refused pair")
    x, m, log_s, theta = _manual_setup()
    with torch.no_grad():
        out = vt.loss(lg.log_joint(x, theta), vt.DiagNormal(m, log_s.exp()), 4, objective, estimator)
    assert torch.isfinite(out.bound).all() and not out.loss.requires_grad


@pytest.mark.parametrize("which", ["independent_normal", "multivariate_normal"])
@pytest.mark.parametrize("estimator", [E.reparam, E.stl, E.dreg, E.score(), E.vimco], ids=str)
def test_plain_torch_distributions_work_as_guides(which, estimator):
    """A torch distribution works as q: same bound and gradients as the vitorch family."""
    x, m, log_s, theta = _manual_setup()
    s = log_s.exp()
    if which == "independent_normal":
        q = torch.distributions.Independent(torch.distributions.Normal(m, s), 1)
    else:
        q = torch.distributions.MultivariateNormal(m, scale_tril=torch.diag_embed(s))
    objective = O.elbo if estimator is E.stl else O.iwae
    torch.manual_seed(4)
    out = vt.loss(lg.log_joint(x, theta), q, 4, objective, estimator)
    got = torch.autograd.grad(out.loss, [m, log_s, theta])
    torch.manual_seed(4)
    ref = vt.loss(lg.log_joint(x, theta), vt.DiagNormal(m, log_s.exp()), 4, objective, estimator)
    want = torch.autograd.grad(ref.loss, [m, log_s, theta])
    if which == "independent_normal":  # same noise stream, so the same particles
        torch.testing.assert_close(out.bound, ref.bound)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    else:
        assert torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in got)


@pytest.mark.filterwarnings("ignore:.*underflows in torch.float32:RuntimeWarning")
@pytest.mark.parametrize("estimator", [E.reparam, E.dreg])
@pytest.mark.parametrize("objective", [O.piwae(5), O.iwae, O.miwae(2)], ids=str)
def test_float32_spread_log_weights_keep_guide_gradients_finite(objective, estimator):
    # Log-weights spread over hundreds of nats make some model weights subnormal in
    # float32 while PIWAE's group weight of the same particle is O(1); the hook's
    # ratio must not overflow to inf (and inf * 0 to NaN) there.
    torch.manual_seed(0)
    m = torch.zeros(64, 4, dtype=torch.float32, requires_grad=True)

    def log_joint(z):
        return -60.0 * z.pow(2).sum(-1)

    out = vt.loss(log_joint, vt.DiagNormal(m, torch.ones(64, 4, dtype=torch.float32)), 10, objective, estimator)
    lw = out.log_w
    assert (lw.max(0).values - lw.min(0).values).max() > 150  # the regime of the bug
    (g,) = torch.autograd.grad(out.loss, m)
    assert torch.isfinite(g).all()


def test_loss_runs_under_func_grad():
    # torch.func.grad through vt.loss: no value may be read inside a transform.
    m0 = torch.zeros(3, D)

    def value(m):
        torch.manual_seed(0)
        q = vt.DiagNormal(m, torch.ones(3, D))
        return vt.loss(lg.log_joint(torch.zeros(3, D), torch.zeros(D)), q, 4, O.iwae, E.reparam).loss

    g = torch.func.grad(value)(m0)
    m = m0.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(value(m), m)
    torch.testing.assert_close(g, expected)
