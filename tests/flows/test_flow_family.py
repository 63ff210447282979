"""The ``Flow`` family: closed forms, shapes, stopped parameters, ``vt.loss`` and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from flow_cases import make
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal

import vitorch as vt
from vitorch import flows
from vitorch.families.flow import Flow
from vitorch.families.gaussian import DiagNormal

from conftest import Z

D, C, B = 3, 2, 4


def _std_normal(d=D):
    return DiagNormal(torch.zeros(d), torch.ones(d))


def _mixed_stack(c=0):
    """One of nearly every transform, so composition and context plumbing are exercised together."""
    names = ["elementwise_affine", "planar", "radial", "sylvester_householder", "iaf_affine", "maf_spline"]
    names += ["coupling_affine", "lu_linear", "sylvester_orthogonal", "iaf_spline", "coupling_spline"]
    return [make(n, D, c, spread=0.1) for n in names] + [flows.Permutation(D)]


def test_lu_linear_flow_is_the_gaussian_it_pushes_forward():
    t = make("lu_linear", D)
    q = Flow(_std_normal(), [t])
    with torch.no_grad():
        x0 = torch.zeros(D)
        bias = t(x0)
        w = torch.autograd.functional.jacobian(t, x0)  # the linear map, independent of ladj
    exact = MultivariateNormal(bias, covariance_matrix=w @ w.T)
    z = torch.randn(20, D) * 2
    torch.testing.assert_close(q.log_prob(z), exact.log_prob(z), atol=1e-12, rtol=0)


def test_fused_and_inverse_log_densities_agree_with_batch_and_context():
    stack = flows.ConditionalFlow(_mixed_stack(C))
    ctx = torch.randn(B, C)
    q = stack(ctx)
    assert q.batch_shape == (B,) and q.event_shape == (D,)
    z, log_q = q.rsample_and_log_prob((5,))
    assert z.shape == (5, B, D) and log_q.shape == (5, B)
    torch.testing.assert_close(q.log_prob(z), log_q, atol=1e-9, rtol=0)
    assert q.sample((2, 3)).shape == (2, 3, B, D)
    assert q.expand((2, B)).rsample((7,)).shape == (7, 2, B, D)


def test_detach_keeps_values_and_stops_every_parameter_and_the_context():
    ctx = torch.randn(B, C, requires_grad=True)
    module = flows.ConditionalFlow(_mixed_stack(C))
    q = module(ctx)
    z = q.sample((3,))
    stopped = vt.stopped(q).log_prob(z)
    torch.testing.assert_close(stopped, q.log_prob(z), atol=1e-12, rtol=0)
    assert not stopped.requires_grad  # z carries no graph, and nothing else may
    # With z on its path, gradients reach the parameters only through z.
    z_path = z.clone().requires_grad_()
    vt.stopped(q).log_prob(z_path).sum().backward()
    assert z_path.grad is not None and all(p.grad is None for p in module.parameters()) and ctx.grad is None


@pytest.mark.parametrize("name", ["planar", "radial", "sylvester_householder", "sylvester_orthogonal", "iaf_spline"])
def test_score_of_log_prob_has_mean_zero(name):
    """``E_q[d/dc log q(z | c)] = 0``: checks log_prob's gradient through the (iterative) inverse.

    Its failure would make sticking-the-landing biased, since STL and the
    reparameterization gradient differ by exactly this score term.  Every datum has
    its own copy of the context, so ``ctx.grad`` holds per-sample scores.
    """
    n = 20_000
    q_mod = flows.ConditionalFlow([make("elementwise_affine", D, spread=0.1), make(name, D, C, spread=0.1)])
    ctx = torch.randn(C).expand(n, C).clone().requires_grad_()
    q = q_mod(ctx)
    z = q.sample()
    q.log_prob(z).sum().backward()
    score = ctx.grad
    mean, se = score.mean(0), score.std(0) / n**0.5
    assert (se > 0).all()
    assert (mean.abs() <= Z * se).all(), f"mean score {mean.tolist()} with standard errors {se.tolist()}"


def test_stl_gradient_is_exactly_zero_when_q_is_the_target():
    """STL has zero variance at the optimum (Roeder et al., 2017), with the target's density
    computed independently of the flow (a Gaussian pushed through a linear map)."""
    stack = [make("elementwise_affine", D), make("lu_linear", D)]
    q = Flow(_std_normal(), stack)
    with torch.no_grad():
        w = torch.autograd.functional.jacobian(lambda x: stack[1](stack[0](x)), torch.zeros(D))
        target = MultivariateNormal(stack[1](stack[0](torch.zeros(D))), covariance_matrix=w @ w.T)
    out = vt.loss(target.log_prob, q, num_particles=16, estimator=vt.estimators.stl)
    out.loss.backward()
    for p in torch.nn.ModuleList(stack).parameters():
        assert p.grad.abs().max() < 1e-10


@pytest.mark.parametrize(
    ("objective", "estimator"),
    [
        (vt.objectives.elbo, vt.estimators.reparam),
        (vt.objectives.elbo, vt.estimators.stl),
        (vt.objectives.iwae, vt.estimators.dreg),
        (vt.objectives.iwae, vt.estimators.reparam),
    ],
)
def test_amortized_flow_trains_through_vt_loss(objective, estimator):
    encoder = torch.nn.Linear(5, C)
    module = flows.ConditionalFlow(_mixed_stack(C))
    x = torch.randn(B, 5)
    q = module(encoder(x))

    def log_joint(z):  # [K, B, D] -> [K, B]
        return -0.5 * (z - x[:, :D]).pow(2).sum(-1)

    out = vt.loss(log_joint, q, num_particles=4, objective=objective, estimator=estimator)
    assert out.bound.shape == (B,) and out.log_w.shape == (4, B)
    out.loss.backward()
    for p in list(module.parameters()) + list(encoder.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert encoder.weight.grad.abs().sum() > 0


class _NoInverse(flows.Transform):
    """A shift with no inverse implemented, standing in for a user's one-way transform."""

    def __init__(self, dim):
        super().__init__(dim)
        self.shift = torch.nn.Parameter(torch.ones(dim))

    def call_and_ladj(self, x, context=None):
        return x + self.shift, x.new_zeros(x.shape[:-1])


def test_transform_without_inverse_fails_clearly_for_log_prob_and_stl():
    q = Flow(_std_normal(), [_NoInverse(D)])
    z, log_q = q.rsample_and_log_prob((3,))  # the forward pass still works
    assert z.shape == (3, D)
    with pytest.raises(flows.NoInverseError, match="sticking-the-landing and DReG"):
        q.log_prob(z)
    with pytest.raises(flows.NoInverseError, match="inverse"):
        vt.loss(lambda z: -z.pow(2).sum(-1), q, num_particles=2, estimator=vt.estimators.stl)
    vt.loss(lambda z: -z.pow(2).sum(-1), q, num_particles=2, estimator=vt.estimators.reparam).loss.backward()


def test_constrained_support_is_validated():
    q = Flow(_std_normal(), [make("elementwise_affine", D), flows.Softplus(D)], validate_args=True)
    assert (q.sample((10,)) > 0).all()
    with pytest.raises(ValueError, match="support"):
        q.log_prob(-torch.ones(D))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Flow(1.0, []), "base"),
        (lambda: Flow(torch.distributions.Normal(0.0, 1.0), []), "event shape"),
        (lambda: Flow(_std_normal(), [flows.Planar(D + 1)]), "dim"),
        (lambda: Flow(_std_normal(), [torch.nn.Linear(D, D)]), "Transform"),
        (lambda: Flow(_std_normal(), [flows.Planar(D, context_features=C)], torch.randn(5, C)).expand((4,)), "expand"),
        (lambda: Flow(DiagNormal(torch.zeros(3, D), torch.ones(3, D)), [], torch.randn(5, C)), "broadcast"),
        (lambda: Flow(_std_normal(), [flows.Planar(D, context_features=C)]).sample(), "context"),
        (lambda: Flow(_std_normal(), [flows.Planar(D, context_features=C)], torch.randn(C + 1)).sample(), "context"),
        (
            lambda: flows.ConditionalFlow([make("maf_affine", D, C)])(torch.randn(3, C)).log_prob(torch.randn(4, D)),
            "broadcast",
        ),
        (lambda: flows.Planar(0), "dim"),
        (lambda: flows.OrthogonalSylvester(2, rank=3), "rank"),
        (lambda: flows.HouseholderSylvester(2, reflections=0), "reflections"),
        (lambda: flows.MAF(3, order=[0, 0, 1]), "order"),
        (lambda: flows.IAF(3, transformer=torch.nn.Identity()), "transformer"),
        (lambda: flows.RQSpline(bins=0), "bins"),
        (lambda: flows.RQSpline(bound=-1.0), "bound"),
        (lambda: flows.AffineCoupling(1), "dim"),
        (lambda: flows.Coupling(3, mask=[True, True, True]), "mask"),
        (lambda: flows.Permutation(3, perm=[0, 1, 1]), "perm"),
        (lambda: flows.ConditionalFlow([]), "dim"),
    ],
)
def test_bad_input_is_a_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("shift", [0.0, 500.0, -500.0])
def test_spline_passes_through_its_knots_with_their_slopes(shift):
    """Knots and slopes computed here from the documented parameterization (softmax bin sizes
    above a floor, softplus interior derivatives), not from the spline's own helpers.  A
    large common shift of the width and height logits (where a plain exp over- or
    underflows) must not change anything: softmax ignores it."""
    k, bound, floor = 5, 2.0, 1e-3
    spline = flows.RQSpline(bins=k, bound=bound)
    params = torch.randn(spline.num_params)
    params[: 2 * k] += shift

    def knots(raw):
        sizes = 2 * bound * (floor + (1 - floor * k) * torch.softmax(raw, -1))
        return -bound + torch.cumsum(sizes, -1)[:-1]  # the K - 1 interior knots

    xs, ys = knots(params[:k]), knots(params[k : 2 * k])
    d = floor + torch.nn.functional.softplus(params[2 * k :] + math.log(math.expm1(1 - floor)))
    y, log_dy = spline(xs.unsqueeze(-1), params.expand(k - 1, 1, -1))
    torch.testing.assert_close(y.squeeze(-1), ys, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_dy.squeeze(-1).exp(), d, atol=1e-12, rtol=0)
    x_back, _ = spline.inverse(ys.unsqueeze(-1), params.expand(k - 1, 1, -1))
    torch.testing.assert_close(x_back.squeeze(-1), xs, atol=1e-12, rtol=0)
    outside = torch.tensor([[-3.0], [2.5], [bound]])
    y_out, log_dy_out = spline(outside, params.expand(1, 1, -1))
    assert torch.equal(y_out, outside) and torch.equal(log_dy_out, torch.zeros_like(outside))


@given(
    sample_shape=st.lists(st.integers(1, 3), max_size=2),
    batch_shape=st.lists(st.integers(1, 3), max_size=2),
    name=st.sampled_from(["planar", "iaf_spline", "maf_affine", "coupling_spline", "sylvester_orthogonal"]),
)
@settings(max_examples=15, deadline=None)
def test_shape_algebra(sample_shape, batch_shape, name):
    torch.manual_seed(0)
    q = flows.ConditionalFlow([make(name, D, C)])(torch.randn(*batch_shape, C))
    z, log_q = q.rsample_and_log_prob(sample_shape)
    assert q.batch_shape == tuple(batch_shape)
    assert z.shape == (*sample_shape, *batch_shape, D) and log_q.shape == (*sample_shape, *batch_shape)
    assert q.log_prob(z).shape == log_q.shape
    # A single z broadcasts against the batch, as torch distributions do.
    assert q.log_prob(z[(0,) * (len(sample_shape) + len(batch_shape))]).shape == tuple(batch_shape)


@pytest.mark.parametrize("name", ["planar", "sylvester_householder", "sylvester_orthogonal"])
def test_stale_newton_hints_cost_time_not_accuracy(name):
    """After a forward pass the flow keeps starting points for its Newton inverses; evaluating
    other points of the same shape must give the same log_prob as a flow without them."""
    stack = [make(name, D) for _ in range(3)]
    q = Flow(_std_normal(), stack)
    q.rsample((50,))  # leaves hints for a different set of points
    assert q._hints
    z = torch.randn(50, D) * 2
    fresh = Flow(_std_normal(), stack)
    torch.testing.assert_close(q.log_prob(z), fresh.log_prob(z), atol=1e-10, rtol=0)
    torch.testing.assert_close(vt.stopped(q).log_prob(z), fresh.log_prob(z), atol=1e-10, rtol=0)


def test_stl_fits_a_gaussian_target_exactly_with_an_lu_flow():
    """An affine-plus-LU flow contains every Gaussian, so ascending the ELBO with STL must close
    the gap to log Z; at the optimum STL's gradient noise vanishes, so the fit gets exact.
    Threshold: KL(q || p) < 1e-3 nats after 300 Adam steps (KL is ~1e-6 by step 200)."""
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    target = MultivariateNormal(torch.tensor([1.0, -2.0]), covariance_matrix=cov)
    guide = flows.ConditionalFlow([flows.ElementwiseAffine(2), flows.LULinear(2)])
    opt = torch.optim.Adam(guide.parameters(), lr=3e-2)
    for _ in range(300):
        out = vt.loss(target.log_prob, guide(), num_particles=8, estimator=vt.estimators.stl)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        z, log_q = guide().rsample_and_log_prob((4000,))
        kl = (log_q - target.log_prob(z)).mean()  # log Z = 0 for a normalized target
    assert kl < 1e-3, f"KL(q || p) = {kl:.2e} after training"
