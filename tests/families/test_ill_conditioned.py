"""Log q at stopped parameters on an ill-conditioned Cholesky factor (STL and DReG).

Sticking-the-landing and DReG read log q at stopped parameters on the guide's own
draws.  Solving ``L u = z - loc`` on the *rounded* ``z`` amplifies the rounding by
``||L^{-1}||``: with a condition number of 1e6 in float32 (1e12 in float64) that
costs STL's gradient 14% (3e-4) of its norm, and on a 501-dimensional posterior whose
factor Adam had pushed to 4e17 it left no correct digit.  The family now reads the
value from the noise ``eps`` (exact) and differentiates ``eps + L^{-1}(z - sg(z))``.

Ground truth: the exact draw is ``z* = loc + L eps``; its log-density is
``-|eps|^2 / 2 - sum log L_ii - D log(2 pi) / 2`` and the gradient of log q in ``z``
is ``-L^{-T} eps``, solved here at 50 digits (mpmath) from the float32/float64 values
of ``L`` and ``eps`` (both exact in float64).

Tolerances.  A sum of D terms in precision ``u`` errs by at most ``D u`` times the sum
of magnitudes; the value is such a sum, so its tolerance is ``4 D u`` times that.  The
gradient is a triangular solve of exact noise: backward stable, but the classical
forward bounds carry ``cond(L)`` and are vacuous here, so the tolerance is
``100 D u`` (5e-13 in float64, 3e-4 in float32), 100 times the measured error
(4e-15 / 1e-6) and at least 500 times below the solve-on-z error it replaces
(3e-4 / 0.14), so the test keeps its power.
"""

from __future__ import annotations

import math
import warnings

import mpmath
import pytest
import torch

import vitorch as vt

D, K = 50, 8
CASES = {"float32, cond 1e6": (torch.float32, 1e6), "float64, cond 1e12": (torch.float64, 1e12)}


def _factor(cond: float, dtype: torch.dtype, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc [D], L [D, D])``: a lower-triangular factor with singular values from 1 to ``1 / cond``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    a = (u * torch.logspace(0, -math.log10(cond), D, dtype=torch.float64)) @ v.T
    _, r = torch.linalg.qr(a.T)  # a = r^T q^T, so a a^T = r^T r and r^T is a Cholesky factor
    tril = (r.T * torch.sign(r.diagonal())).tril()
    loc = 10 * torch.randn(D, generator=g, dtype=torch.float64)  # a mean away from 0 also rounds z
    return loc.to(dtype), tril.to(dtype)


def _exact_score(tril: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``-L^{-T} eps`` ``[K, D]`` by back substitution at 50 significant digits."""
    with mpmath.workdps(50):
        n = tril.shape[0]
        lm = [[mpmath.mpf(float(tril[i, j])) for j in range(n)] for i in range(n)]
        out = torch.empty(eps.shape, dtype=torch.float64)
        for k in range(eps.shape[0]):
            x = [mpmath.mpf(0)] * n
            for i in reversed(range(n)):
                x[i] = (mpmath.mpf(float(eps[k, i])) - mpmath.fsum(lm[j][i] * x[j] for j in range(i + 1, n))) / lm[i][i]
            out[k] = torch.tensor([-float(v) for v in x], dtype=torch.float64)
    return out


def _noise(seed: int, dtype: torch.dtype) -> torch.Tensor:
    # FullRankNormal draws its noise with one torch.randn of the sample's shape.
    torch.manual_seed(seed)
    return torch.randn(K, D, dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("case", list(CASES))
def test_stopped_draw_reads_the_exact_log_density_and_its_gradient(case):
    dtype, cond = CASES[case]
    u = torch.finfo(dtype).eps
    loc, tril = _factor(cond, dtype)
    q = vt.FullRankNormal(loc.requires_grad_(), tril, validate_args=False)
    torch.manual_seed(3)
    z, log_q = q.rsample_and_stopped_log_prob((K,))
    eps = _noise(3, dtype).double()
    tril64 = tril.double()
    z_exact = loc.detach().double() + eps @ tril64.mT
    assert _rel(z.detach(), z_exact) < 10 * D * u  # the reproduced noise is the family's

    half_sq, log_det = 0.5 * eps.pow(2).sum(-1), tril64.diagonal().log().sum()
    exact = -half_sq - log_det - 0.5 * D * math.log(2 * math.pi)
    tol = 4 * D * u * (half_sq + tril64.diagonal().log().abs().sum() + D)
    assert ((log_q.double() - exact).abs() <= tol).all(), (log_q.double() - exact).abs().max()

    (score,) = torch.autograd.grad(log_q.sum(), z)
    assert _rel(score, _exact_score(tril64, eps)) < 100 * D * u


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pair", ["elbo/stl", "iwae/dreg"])
def test_stl_and_dreg_gradients_on_an_ill_conditioned_factor(case, pair):
    dtype, cond = CASES[case]
    u = torch.finfo(dtype).eps
    loc0, tril0 = _factor(cond, dtype)
    loc, tril = loc0.clone().requires_grad_(), tril0.clone().requires_grad_()
    objective, estimator = {"elbo/stl": (vt.objectives.elbo, vt.estimators.stl)}.get(
        pair, (vt.objectives.iwae, vt.estimators.dreg)
    )
    torch.manual_seed(4)
    out = vt.loss(
        lambda z: -0.5 * z.pow(2).sum(-1),  # log p up to a constant: N(0, I)
        vt.FullRankNormal(loc, tril, validate_args=False),
        K,
        objective,
        estimator,
    )
    g_loc, g_tril = torch.autograd.grad(out.loss, [loc, tril])

    # The estimator's gradient by hand (Roeder et al., 2017; Tucker et al., 2019):
    # -sum_k c_k (grad log p - grad log q_sg)(z_k)^T dz_k/dphi, with dz/dloc = I and
    # dz/dL_ij = eps_j e_i, c_k = 1/K for the ELBO and the squared normalized weights for IWAE.
    eps = _noise(4, dtype).double()
    tril64 = tril0.double()
    z = loc0.double() + eps @ tril64.mT
    g = -z - _exact_score(tril64, eps)
    if pair == "elbo/stl":
        c = torch.full((K,), 1.0 / K, dtype=torch.float64)
    else:
        log_q = -0.5 * eps.pow(2).sum(-1) - tril64.diagonal().log().sum() - 0.5 * D * math.log(2 * math.pi)
        c = torch.softmax(-0.5 * z.pow(2).sum(-1) - log_q, 0).pow(2)
    expected_loc = -(c[:, None] * g).sum(0)
    expected_tril = -(c[:, None, None] * g[:, :, None] * eps[:, None, :]).sum(0).tril()
    assert _rel(g_loc, expected_loc) < 100 * D * u
    assert _rel(g_tril, expected_tril) < 100 * D * u


@pytest.mark.parametrize(
    ("make", "dtype"),
    [
        (lambda dtype: vt.FullRankNormal(*_factor(1e7, dtype), validate_args=False), torch.float32),
        (lambda dtype: vt.FullRankNormal(*_factor(1e16, dtype), validate_args=False), torch.float64),
        (lambda dtype: vt.LowRankNormal(torch.zeros(4), 1e4 * torch.ones(4, 1), 1e-2 * torch.ones(4)), torch.float32),
    ],
)
def test_log_prob_warns_when_conditioning_makes_it_unreliable(make, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        q = make(dtype)
    finally:
        torch.set_default_dtype(old)
    z = q.sample((2,))
    with pytest.warns(RuntimeWarning, match=rf"log_prob is unreliable in {dtype}"):
        q.log_prob(z)
    # The draws STL and DReG read do not solve on z, and say nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.rsample_and_stopped_log_prob((2,))
        q.rsample_and_log_prob((2,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_well_conditioned_factor_does_not_warn(dtype):
    loc, tril = _factor(1e2, dtype)
    q = vt.FullRankNormal(loc, tril)
    low = vt.LowRankNormal(loc, tril[:, :3], torch.ones(D, dtype=dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.log_prob(q.sample((2,)))
        low.log_prob(low.sample((2,)))
