"""Conjugate-computation VI (CVI): natural-gradient steps on an SVGP's q(u) for any likelihood,
the dual (site) parameterization, and the EP-like objective for hyperparameters.

Write ``q(f_n) = N(mu_n, v_n)`` for the SVGP marginal of datum ``n`` and
``E_n(mu_n, v_n) = E_q log p(y_n | f_n)`` (closed form or the likelihood's Gauss–Hermite
rule).  The natural gradient of the ELBO in q's natural parameters is its ordinary
gradient in q's mean parameters, and for the data term that gradient is a Gaussian
*site* per datum, a function of ``f_n - m(x_n)`` (the prior mean removed):

    lam_n = -2 dE_n/dv_n,        eta_n = dE_n/dmu_n + lam_n (mu_n - m(x_n)).

Lifted to the whitened inducing variables ``v = L^{-1} u`` through ``a_n = L^{-1} k(Z, x_n)``,
a step of size ``lr`` on a batch ``b`` (scale ``s = N / |b|``) is

    Lambda <- (1 - lr) Lambda + lr (I + s A diag(lam) A^T),
    Lambda m <- (1 - lr) Lambda m + lr s A eta,

the same update `SVGP.natural_gradient_step` takes for a Gaussian likelihood, where the
sites are the likelihood itself (``lam = 1 / sigma^2``, ``eta = (y - m(x)) / sigma^2``), so one
step with ``lr = 1`` on the full data lands on SGPR's optimal q.  For other likelihoods the
fixed point of the iteration is the optimum of the SVGP bound.  The batch statistics
``A diag(lam) A^T``, ``A eta`` and ``|b|`` go through the SVGP step's one ``all_reduce`` when a
``torch.distributed`` group of several processes is initialized.

**Dual parameters.**  At a fixed point ``q(v) ∝ N(v; 0, I) prod_n t_n(a_n^T v)`` with
``log t_n(g) = eta_n g - lam_n g^2 / 2``: the sites ``(eta, lam)`` (`Sites`, two ``[N]``
vectors) parameterize q, and q follows the hyperparameters when they change
(`q_from_sites`).  Holding the sites fixed, two hyperparameter objectives are available:
`dual_elbo` (the ELBO at ``q(sites, theta)``; with a Gaussian likelihood's sites it is
Titsias' collapsed bound) and `ep_objective`, the EP-like marginal-likelihood
approximation of Li, John & Solin (2023) built from the same sites,

    L_alpha = log Z_t + sum_n (1/alpha) [log E_{c_n}[p(y_n | f_n)^alpha] - log E_{c_n}[t_n(g_n)^alpha]],

``log Z_t = log int N(v; 0, I) prod_n t_n(a_n^T v) dv``, ``c_n`` the cavity ``q(g_n) / t_n(g_n)^alpha``
of ``g_n = a_n^T v`` (widened by ``k_nn - |a_n|^2`` for ``f_n``).  ``alpha = 1`` is EP's energy
(the paper's choice); ``alpha -> 0`` recovers `dual_elbo`; with ``Z = X`` and a Gaussian
likelihood's sites it equals the exact log marginal likelihood for every ``alpha``.

References:
    Khan & Lin, Conjugate-Computation Variational Inference (AISTATS 2017);
    Hensman, Fusi & Lawrence, Gaussian Processes for Big Data (UAI 2013);
    Salimbeni, Eleftheriadis & Hensman, Natural Gradients in Practice (AISTATS 2018);
    Adam, Chang, Khan & Solin, Dual Parameterization of Sparse Variational Gaussian
    Processes (NeurIPS 2021); Chang, Verma, Li, Solin & Khan, Memory-Based Dual Gaussian
    Processes for Sequential Learning (ICML 2023); Li, John & Solin, Improving
    Hyperparameter Learning under Approximate Inference in Gaussian Process Models (ICML 2023).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ...families import FullRankNormal
from .likelihoods import GaussianLikelihood
from .linalg import NotPositiveDefiniteError, check_data, jittered_cholesky
from .svgp import SVGP, _summed_over_ranks

_MAX_HALVINGS = 30
_LOG_2PI = math.log(2 * math.pi)

__all__ = ["Sites", "site_gradients", "cvi_step", "site_parameters", "q_from_sites", "dual_elbo", "ep_objective"]


class Sites(NamedTuple):
    """Gaussian sites ``t_n(g) = exp(eta_n g - lam_n g^2 / 2)`` on ``g_n = f_n - m(x_n)``: the dual
    parameters of an SVGP's q, each ``[N]`` (``lam`` is the site precision, ``eta`` its natural mean).

    References:
        Adam, Chang, Khan & Solin, *Dual Parameterization of Sparse Variational Gaussian Processes* (NeurIPS 2021).
    """

    eta: Tensor
    lam: Tensor


def _check_model(model, owner: str) -> None:
    if not isinstance(model, SVGP):
        raise TypeError(f"{owner}: needs a vitorch.models.gp.SVGP; got {type(model).__name__}")
    if model.family is not FullRankNormal:
        raise ValueError(f"{owner}: needs an SVGP with family=FullRankNormal (natural parameters of a full q)")


def site_gradients(likelihood, y: Tensor, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """``dE_n/dmu_n`` and ``dE_n/dv_n`` of ``E_n = E_{N(f; mu_n, v_n)} log p(y_n | f)``, each ``[N]``.

    Differentiates the likelihood's own ``expected_log_prob`` (closed form, Gauss–Hermite or Monte
    Carlo), which treats each datum separately, so one backward pass gives every datum's pair.

    Args:
        likelihood: a `vitorch.models.gp.Likelihood`.
        y: ``[N]`` targets.
        mean: ``[N]`` marginal means ``mu_n``.
        var: ``[N]`` marginal variances ``v_n``.

    References:
        Khan & Lin, *Conjugate-Computation Variational Inference* (AISTATS 2017), eq. (9).
    """
    with torch.enable_grad():
        m = mean.detach().requires_grad_(True)
        v = var.detach().requires_grad_(True)
        total = likelihood.expected_log_prob(y, m, v).sum()
        g_m, g_v = torch.autograd.grad(total, (m, v))
    return g_m, g_v


def _projection(model: SVGP, x: Tensor) -> tuple[Tensor, Tensor]:
    """``A = L^{-1} K_mn [M, N]`` and ``L``, the Cholesky factor of ``K_mm``."""
    l_mm = model._chol_kmm()
    return torch.linalg.solve_triangular(l_mm, model.kernel(model.inducing, x), upper=False), l_mm


def _batch_sites(model: SVGP, x: Tensor, y: Tensor, a: Tensor, l_mm: Tensor) -> Sites:
    """The sites of the current q at the rows of ``x`` (``a`` their projection)."""
    loc, tril = model._whitened_q(l_mm)
    centred = a.mT @ loc  # mu_n - m(x_n)
    var = model.kernel.diag(x) - a.pow(2).sum(0) + (tril.mT @ a).pow(2).sum(0)
    g_m, g_v = site_gradients(model.likelihood, y, model.mean(x) + centred, var.clamp_min(1e-30))
    lam = -2.0 * g_v
    return Sites(g_m + lam * centred, lam)


def _check(model, x, y, owner: str) -> None:
    _check_model(model, owner)
    check_data(owner, x, y, dtype=model.inducing.dtype, width=model.inducing.shape[-1])
    model.likelihood.check_y(y)


@torch.no_grad()
def cvi_step(model: SVGP, x: Tensor, y: Tensor, lr: float = 1.0) -> float:
    """One CVI (natural-gradient) step of size ``lr`` on ``model``'s q for any likelihood.

    The batch's sites are lifted to the inducing variables and mixed into q's natural
    parameters (module docstring).  Under an initialized ``torch.distributed`` group of several
    processes the batch statistics are summed over the ranks with one ``all_reduce`` (every rank
    must call it, each with its own batch) and the ranks' q stay identical.

    Args:
        model: an `SVGP` with ``family=FullRankNormal`` (whitened or not).
        x: ``[B, D]`` batch inputs (this rank's, under DDP).
        y: ``[B]`` batch targets.
        lr: step size in ``(0, 1]``; 1 solves a Gaussian likelihood in one full-data step, and
            ``0.5``–``1`` is the usual range for log-concave likelihoods (Bernoulli, Poisson).

    Raises:
        TypeError: if ``model`` is not an `SVGP`.
        ValueError: for a diagonal family, ``lr`` outside ``(0, 1]`` or bad data.
        NotPositiveDefiniteError: if a non-log-concave likelihood (Student-t) keeps q's precision
            indefinite after 30 halvings of the step.

    Returns:
        The step size taken: ``lr``, or ``lr / 2^j`` when a non-log-concave likelihood's negative
        site precisions made the full step leave the positive-definite cone.

    References:
        Khan & Lin, *Conjugate-Computation Variational Inference* (AISTATS 2017);
        Salimbeni, Eleftheriadis & Hensman, *Natural Gradients in Practice* (AISTATS 2018).
    """
    _check(model, x, y, "cvi_step")
    if not 0 < lr <= 1:
        raise ValueError(f"cvi_step: lr must lie in (0, 1]; got {lr}")
    a, l_mm = _projection(model, x)
    sites = _batch_sites(model, x, y, a, l_mm)
    a_lam_a, a_eta, count = _summed_over_ranks((a * sites.lam) @ a.mT, a @ sites.eta, x.shape[0])
    scale = model.num_data / count
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    lam_target = eye + scale * a_lam_a
    # A site of negative precision (non-log-concave likelihoods) can make the mixed precision
    # indefinite: halve the step until it is not.  Fixed points are unchanged, and log-concave
    # likelihoods never need it (their target precision is positive definite).
    lam_old = torch.cholesky_inverse(model._whitened_q(l_mm)[1])
    for _ in range(_MAX_HALVINGS):
        if not bool(torch.linalg.cholesky_ex((1 - lr) * lam_old + lr * lam_target)[1]):
            break
        lr = lr / 2
    else:
        raise NotPositiveDefiniteError(
            f"cvi_step: q's precision stays indefinite even at step size {lr:.1e}; the likelihood's sites are "
            "too negative (try a smaller lr or better hyperparameters)"
        )
    model._natural_update(lam_target, scale * a_eta, lr, l_mm)
    return lr


@torch.no_grad()
def site_parameters(model: SVGP, x: Tensor, y: Tensor) -> Sites:
    """The dual parameters of ``model``'s current q on the data ``(x [N, D], y [N])``, detached.

    At a CVI fixed point ``q_from_sites(model, x, site_parameters(model, x, y))`` is ``model.q()``
    itself; away from it they are the sites one full-data step with ``lr = 1`` would install.

    References:
        Adam, Chang, Khan & Solin, *Dual Parameterization of Sparse Variational Gaussian Processes* (NeurIPS 2021).
    """
    _check(model, x, y, "site_parameters")
    a, l_mm = _projection(model, x)
    return _batch_sites(model, x, y, a, l_mm)


def _check_sites(sites: Sites, n: int, owner: str) -> None:
    if not isinstance(sites, Sites):
        raise TypeError(f"{owner}: sites must be a vitorch.models.gp.cvi.Sites; got {type(sites).__name__}")
    for name, t in zip(("eta", "lam"), sites):
        if t.shape != (n,):
            raise ValueError(f"{owner}: sites.{name} must have shape [N] = [{n}] to match X; got {tuple(t.shape)}")


def _dual_posterior(model: SVGP, x: Tensor, sites: Sites) -> dict[str, Tensor]:
    """Whitened q of the sites: ``Lambda = I + A diag(lam) A^T = L_q L_q^T``, ``b = A eta``, ``m = Lambda^{-1} b``."""
    a, l_mm = _projection(model, x)
    lam = torch.eye(a.shape[0], dtype=a.dtype, device=a.device) + (a * sites.lam) @ a.mT
    l_q = jittered_cholesky(lam, "site precision I + A diag(lam) A^T", jitter=0.0)
    b = a @ sites.eta
    m = torch.cholesky_solve(b.unsqueeze(-1), l_q).squeeze(-1)
    return {"a": a, "l_mm": l_mm, "l_q": l_q, "b": b, "m": m}


def q_from_sites(model: SVGP, x: Tensor, sites: Sites) -> FullRankNormal:
    """``q ∝ p(v) prod_n t_n(a_n^T v)`` under ``model``'s current hyperparameters, a `FullRankNormal`
    over ``[M]`` in ``model``'s parameterization (whitened ``v`` or ``u``), for ``model.set_q``.

    Differentiable in the hyperparameters (kernel, mean, inducing inputs); ``O(N M^2)``.

    Args:
        model: an `SVGP` (full-rank family).
        x: ``[N, D]`` the inputs the sites belong to.
        sites: `Sites` with ``[N]`` entries.

    References:
        Adam, Chang, Khan & Solin, *Dual Parameterization of Sparse Variational Gaussian Processes* (NeurIPS 2021).
    """
    _check_model(model, "q_from_sites")
    check_data("q_from_sites", x, dtype=model.inducing.dtype, width=model.inducing.shape[-1])
    _check_sites(sites, x.shape[0], "q_from_sites")
    t = _dual_posterior(model, x, sites)
    tril = jittered_cholesky(torch.cholesky_inverse(t["l_q"]), "q covariance", jitter=0.0)
    loc = t["m"]
    if not model.whiten:
        loc, tril = t["l_mm"] @ loc, t["l_mm"] @ tril
    return FullRankNormal(loc, tril, validate_args=False)


def _marginal_terms(model: SVGP, x: Tensor, sites: Sites) -> dict[str, Tensor]:
    t = _dual_posterior(model, x, sites)
    a = t["a"]
    t["g_mean"] = a.mT @ t["m"]  # mean of g_n = a_n^T v under q
    t["g_var"] = torch.linalg.solve_triangular(t["l_q"], a, upper=False).pow(2).sum(0)  # a^T Lambda^{-1} a
    t["extra"] = (model.kernel.diag(x) - a.pow(2).sum(0)).clamp_min(0.0)  # k_nn - |a_n|^2
    t["log_zt"] = 0.5 * t["b"] @ t["m"] - t["l_q"].diagonal().log().sum()
    return t


def dual_elbo(model: SVGP, x: Tensor, y: Tensor, sites: Sites) -> Tensor:
    """The SVGP bound on ``log p(y)`` at ``q = q_from_sites(model, x, sites)``, a scalar.

    With the sites held fixed this is a function of the hyperparameters alone (q moves with
    them), the M-step objective of the dual parameterization; for a `GaussianLikelihood` and its
    exact sites (``lam = 1 / sigma^2``, ``eta = (y - m(x)) / sigma^2``) it equals Titsias' collapsed
    bound (`SGPR.full_data_elbo`) at every kernel.  Full data ``x [N, D]``, ``y [N]``; ``O(N M^2)``.

    References:
        Adam, Chang, Khan & Solin, *Dual Parameterization of Sparse Variational Gaussian Processes* (NeurIPS 2021).
    """
    _check(model, x, y, "dual_elbo")
    _check_sites(sites, x.shape[0], "dual_elbo")
    t = _marginal_terms(model, x, sites)
    mean = model.mean(x) + t["g_mean"]
    var = (t["g_var"] + t["extra"]).clamp_min(1e-30)
    expected = model.likelihood.expected_log_prob(y, mean, var).sum()
    # KL(N(m, Lambda^{-1}) || N(0, I)) = (tr Lambda^{-1} + |m|^2 - M + log|Lambda|) / 2
    l_q = t["l_q"]
    eye = torch.eye(l_q.shape[0], dtype=l_q.dtype, device=l_q.device)
    trace = torch.linalg.solve_triangular(l_q, eye, upper=False).pow(2).sum()
    kl = 0.5 * (trace + t["m"] @ t["m"] - l_q.shape[0]) + l_q.diagonal().log().sum()
    return expected - kl


def _log_expected_power(likelihood, y: Tensor, mean: Tensor, var: Tensor, power: float) -> Tensor:
    """``log E_{N(f; mean, var)} p(y | f)^power``, ``[N]``; closed form for a Gaussian likelihood."""
    if isinstance(likelihood, GaussianLikelihood):
        s2 = likelihood.noise
        tot = var + s2 / power
        # p^alpha = (2 pi s2)^{-alpha/2} (2 pi s2 / alpha)^{1/2} N(y; f, s2 / alpha)
        log_norm = -0.5 * power * (_LOG_2PI + s2.log()) + 0.5 * (_LOG_2PI + (s2 / power).log())
        return log_norm - 0.5 * (_LOG_2PI + tot.log() + (y - mean).pow(2) / tot)
    return likelihood.integrator.log_expect_exp(lambda f: power * likelihood.log_prob(f, y), mean, var)


def ep_objective(model: SVGP, x: Tensor, y: Tensor, sites: Sites, power: float = 1.0) -> Tensor:
    """The EP-like approximation ``L_alpha`` of ``log p(y)`` from fixed sites, a scalar (module docstring).

    Li, John & Solin (2023) infer q by CVI and learn the hyperparameters by maximizing EP's
    marginal-likelihood approximation evaluated with the CVI sites (``power = 1``).  Per datum it
    needs one tilted integral ``log E_{c_n} p(y_n | f)^alpha`` (the likelihood's Gauss–Hermite rule,
    closed form for a Gaussian) and a closed-form Gaussian one.  Full data ``x [N, D]``,
    ``y [N]``; ``O(N M^2)``; differentiable in every hyperparameter.

    Args:
        model: an `SVGP` (full-rank family); its q is not used, only its hyperparameters.
        x: ``[N, D]`` inputs.
        y: ``[N]`` targets.
        sites: `Sites` from `site_parameters` (held fixed).
        power: ``alpha`` in ``(0, 1]``: 1 is EP's energy; small values approach `dual_elbo`.

    Raises:
        ValueError: for ``power`` outside ``(0, 1]``, mismatched sites, or a cavity with non-positive
            precision (a site more precise than its marginal, possible with a non-log-concave likelihood).

    References:
        Li, John & Solin, *Improving Hyperparameter Learning under Approximate Inference in Gaussian
        Process Models* (ICML 2023); Minka, *Expectation Propagation for Approximate Bayesian Inference*
        (UAI 2001); Minka, *Power EP* (Microsoft Research TR-2004-149).
    """
    _check(model, x, y, "ep_objective")
    _check_sites(sites, x.shape[0], "ep_objective")
    if not 0 < power <= 1:
        raise ValueError(f"ep_objective: power must lie in (0, 1]; got {power}")
    t = _marginal_terms(model, x, sites)
    w, gm = t["g_var"], t["g_mean"]
    cav_prec = 1.0 / w - power * sites.lam
    if not bool((cav_prec > 0).all()):
        bad = int((cav_prec <= 0).sum())
        raise ValueError(
            f"ep_objective: {bad} cavities have non-positive precision (a site more precise than its marginal); "
            "use a smaller power"
        )
    cav_nat = gm / w - power * sites.eta
    cav_var = 1.0 / cav_prec
    cav_mean = cav_nat * cav_var
    log_tilted = _log_expected_power(model.likelihood, y, model.mean(x) + cav_mean, cav_var + t["extra"], power)
    # log E_{N(g; cav)} t(g)^alpha: the site times the cavity is q(g) again, so it is a ratio of normalizers
    log_site = 0.5 * (torch.log(w * cav_prec) + gm.pow(2) / w - cav_nat.pow(2) / cav_prec)
    return t["log_zt"] + ((log_tilted - log_site) / power).sum()
