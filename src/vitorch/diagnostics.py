"""Diagnostics for variational fits: importance-weight quality, gradient noise, posterior collapse.

* :func:`ess` and :func:`psis` / :func:`psis_khat` read the log-weights
  ``log_w [K, *batch]`` that :func:`vitorch.loss` returns (``out.log_w``) and say
  how far ``q`` is from the posterior in the sense that matters for importance
  sampling (Yao et al., 2018).
* :func:`gradient_snr` measures the signal-to-noise ratio of a stochastic
  gradient, the quantity Rainforth et al. (2018) use to compare estimators.
* :func:`kl_per_dim`, :func:`active_units` and :func:`collapse_diagnostics` find
  latent dimensions that a VAE's encoder has stopped using (Burda et al., 2016).

Everything here except :func:`kl_per_dim` is a measurement: it returns no
gradient, and no function touches ``.grad``.

References:
    Vehtari, Simpson, Gelman, Yao & Gabry, Pareto Smoothed Importance Sampling (2015-2024).
    Yao, Vehtari, Simpson & Gelman, Yes, but Did It Work?: Evaluating Variational Inference (2018).
    Zhang & Stephens, A New and Efficient Estimation Method for the Generalized Pareto
    Distribution (Technometrics, 2009).
    Rainforth et al., Tighter Variational Bounds are Not Necessarily Better (2018).
    Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from .families import DiagNormal

__all__ = [
    "ess",
    "psis",
    "psis_khat",
    "KHAT_GOOD",
    "KHAT_OK",
    "gradient_snr",
    "GradientSNR",
    "kl_per_dim",
    "active_units",
    "ActiveUnits",
    "collapse_diagnostics",
    "CollapseDiagnostics",
]

KHAT_GOOD = 0.5
"""Below this the importance weights have finite variance; ``q`` is close to the posterior."""
KHAT_OK = 0.7
"""Between :data:`KHAT_GOOD` and this, PSIS estimates are still usable; above it they are unreliable."""

_PRIOR_STRENGTH = 10.0  # Vehtari et al.: k-hat is shrunk towards 0.5 as if by 10 prior observations
_PRIOR_K = 0.5
_MIN_TAIL = 5  # fewer tail draws than this cannot support a two-parameter fit


def _check_log_w(log_w: Tensor) -> Tensor:
    if not isinstance(log_w, Tensor) or not log_w.is_floating_point():
        raise ValueError(f"log_w must be a floating-point tensor [K, *batch]; got {type(log_w).__name__}")
    if log_w.dim() < 1 or log_w.shape[0] < 1:
        raise ValueError(f"log_w must have K >= 1 particles along dim 0; got shape {tuple(log_w.shape)}")
    if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
        raise ValueError("log_w must hold no NaN or +inf (a weight of zero is -inf and allowed)")
    # Weights span many orders of magnitude; half precision cannot hold their sums.
    return log_w.detach().float() if log_w.dtype in (torch.float16, torch.bfloat16) else log_w.detach()


@torch.no_grad()
def ess(log_w: Tensor) -> Tensor:
    """Effective sample size ``(sum_k w_k)^2 / sum_k w_k^2`` of importance weights.

    Computed as ``exp(2 logsumexp(log_w) - logsumexp(2 log_w))``, so weights of any
    magnitude are safe.  It lies in ``[1, K]``: ``K`` for equal weights, ``1`` when
    one weight dominates; a row whose weights are all zero (``-inf``) gives ``0``.

    Args:
        log_w: ``[K, *batch]`` log importance weights (unnormalized).

    Returns:
        ``[*batch]`` effective sample sizes (no gradient), in ``log_w``'s dtype.

    References:
        Kong, A Note on Importance Sampling using Standardized Weights (1992).
    """
    lw = _check_log_w(log_w)
    dtype = log_w.dtype
    top = lw.amax(0)
    empty = top == -math.inf
    lw = lw - torch.where(empty, 0.0, top)  # the largest weight becomes 1
    log_ess = 2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)
    return torch.where(empty, 0.0, log_ess.exp()).to(dtype)


def _tail_size(K: int) -> int:
    return math.ceil(min(0.2 * K, 3.0 * math.sqrt(K)))


def _gpd_fit(x: Tensor) -> tuple[Tensor, Tensor]:
    """Generalized Pareto fit to exceedances by Zhang & Stephens (2009), with PSIS's prior.

    The density is ``(1/sigma) (1 + k x / sigma)^(-1/k - 1)``.  Writing
    ``theta = -k / sigma``, the likelihood maximized over ``k`` for fixed ``theta`` is at
    ``k(theta) = mean(log(1 - theta x))``, with profile log-likelihood
    ``n (log(-theta / k(theta)) - k(theta) - 1)``.  Zhang & Stephens average ``theta``
    over a fixed grid of ``m = 30 + floor(sqrt(n))`` points weighted by that profile
    likelihood (an empirical-Bayes posterior mean): no iterative optimizer, always
    defined, and about as efficient as maximum likelihood (it sits an ``O(1/n)``
    offset from the MLE).  Vehtari et al. then shrink ``k`` towards 0.5
    with the weight of 10 observations: ``k = (n k + 5) / (n + 10)``.

    Args:
        x: ``[n, B]`` non-negative exceedances, sorted ascending along dim 0, with
            a positive largest value in every column.

    Returns:
        ``(k, sigma)``, each ``[B]``.
    """
    n = x.shape[0]
    m = 30 + math.isqrt(n)
    x_max = x[-1]
    x_quartile = x[int(n / 4 + 0.5) - 1]
    # The grid's scale is the first quartile; if ties put it at zero, fall back to a
    # positive scale so the grid stays finite (the likelihood weights still decide).
    x_quartile = torch.where(x_quartile > 0, x_quartile, x_max / n)
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    spread = 1.0 - torch.sqrt(m / (j - 0.5))  # from about -sqrt(2m) up to just below 0
    theta = 1.0 / x_max + spread.unsqueeze(-1) / (3.0 * x_quartile)  # [m, B], every theta < 1 / x_max
    k = torch.log1p(-theta.unsqueeze(1) * x).mean(1)  # [m, B]
    profile = n * (torch.log(-theta / k) - k - 1.0)
    profile = profile.nan_to_num(nan=-math.inf)  # theta == 0 exactly (0/0): weight it out
    theta_hat = (torch.softmax(profile, 0) * theta).sum(0)
    k_hat = torch.log1p(-theta_hat * x).mean(0)
    sigma = -k_hat / theta_hat
    k_hat = (n * k_hat + _PRIOR_STRENGTH * _PRIOR_K) / (n + _PRIOR_STRENGTH)
    return k_hat, sigma


def _gpd_quantile(p: Tensor, k: Tensor, sigma: Tensor) -> Tensor:
    """``F^{-1}(p) = sigma ((1 - p)^(-k) - 1) / k`` (``-sigma log(1 - p)`` at ``k = 0``)."""
    log_survival = torch.log1p(-p)
    k_safe = torch.where(k == 0, 1.0, k)
    return sigma * torch.where(k == 0, -log_survival, torch.expm1(-k_safe * log_survival) / k_safe)


@torch.no_grad()
def psis(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Pareto-smoothed importance sampling: smoothed log-weights and the k-hat diagnostic.

    Per batch element, the ``M = ceil(min(K / 5, 3 sqrt(K)))`` largest weights are
    fitted by a generalized Pareto distribution above the next-largest weight ``u``
    (Zhang & Stephens' 2009 estimator with Vehtari et al.'s weakly informative prior
    on the shape), and replaced by the fitted distribution's quantiles at the
    plotting positions, ``u + F^{-1}((j - 1/2) / M)``, ``j = 1..M``, truncated
    at the largest raw weight.  The rest of the weights are unchanged and the order of
    the weights is kept.  The fitted shape k-hat says how heavy the weights' tail is
    (moments of the weights of order below ``1 / k`` are finite):

    * ``k < 0.5`` (:data:`KHAT_GOOD`): finite variance; ``q`` is a good proposal.
    * ``0.5 <= k < 0.7`` (:data:`KHAT_OK`): infinite variance, but PSIS estimates are
      still usable (the latest version of the paper uses ``min(1 - 1/log10(K), 0.7)``).
    * ``k >= 0.7``: unreliable; importance-sampled estimates, including IWAE bounds,
      cannot be trusted and ``q`` is far from the posterior (Yao et al., 2018).

    Special cases: with fewer than 5 tail draws (``K <= 20``) or a row whose weights
    are all zero, k-hat is ``inf`` (cannot be assessed) and the row is not smoothed;
    if the ``M`` largest weights all equal the threshold (bounded weights, e.g.
    ``q`` equal to the posterior) k-hat is ``-inf`` and nothing needs smoothing.

    Args:
        log_w: ``[K, *batch]`` log importance weights (unnormalized).

    Returns:
        ``(smoothed_log_w, khat)``: ``[K, *batch]`` smoothed log-weights on the input's
        scale (not normalized) and ``[*batch]`` k-hat, in ``log_w``'s dtype, no gradient.

    References:
        Vehtari, Simpson, Gelman, Yao & Gabry, Pareto Smoothed Importance Sampling (2015-2024).
    """
    lw = _check_log_w(log_w).double()  # the fit takes logs of small differences
    dtype = log_w.dtype
    K, batch = lw.shape[0], lw.shape[1:]
    lw = lw.reshape(K, -1)
    khat = torch.full(lw.shape[1:], math.inf, dtype=lw.dtype, device=lw.device)
    M = _tail_size(K)
    if M < _MIN_TAIL:
        return log_w.detach().clone(), khat.reshape(batch).to(dtype)

    sorted_lw, order = lw.sort(0)
    top = sorted_lw[-1]
    fit = top > -math.inf  # rows with at least one nonzero weight
    s = sorted_lw - torch.where(fit, top, 0.0)  # the largest weight becomes 1
    tail, cutoff = s[K - M :], s[K - M - 1]
    # Exceedances over the threshold weight exp(cutoff), formed without cancellation.
    finite_cut = cutoff > -math.inf
    safe_cut = torch.where(finite_cut, cutoff, 0.0)
    x = torch.where(finite_cut, safe_cut.exp() * torch.expm1(tail - safe_cut), tail.exp())
    tied = fit & (x[-1] <= 0)
    fit = fit & ~tied
    x = torch.where(fit, x, 1.0)  # placeholder columns, results discarded below
    k, sigma = _gpd_fit(x)
    khat = torch.where(tied, -math.inf, torch.where(fit, k, khat))

    smooth = fit & torch.isfinite(k) & (sigma > 0)
    p = (torch.arange(1, M + 1, dtype=s.dtype, device=s.device) - 0.5) / M
    q = _gpd_quantile(p.unsqueeze(-1), k, sigma)  # [M, B], ascending exceedances
    new_tail = torch.where(finite_cut, safe_cut + torch.log1p(q * torch.exp(-safe_cut)), q.log())
    new_tail = new_tail.clamp_max(0.0)  # no smoothed weight above the largest raw weight
    # Only the smoothed tail is shifted back; the rest keeps its input values bit for bit.
    sorted_lw[K - M :] = torch.where(smooth, new_tail + torch.where(smooth, top, 0.0), sorted_lw[K - M :])
    smoothed = torch.empty_like(sorted_lw).scatter_(0, order, sorted_lw)
    return smoothed.reshape(K, *batch).to(dtype), khat.reshape(batch).to(dtype)


def psis_khat(log_w: Tensor) -> Tensor:
    """The Pareto k-hat of :func:`psis` alone: ``log_w [K, *batch] -> [*batch]``.

    Read it with the thresholds :data:`KHAT_GOOD` (0.5) and :data:`KHAT_OK` (0.7);
    see :func:`psis`.

    References:
        Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling* (arXiv:1507.02646,
        2015; JMLR 2024).
        Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference* (ICML 2018).
    """
    return psis(log_w)[1]


@dataclass(frozen=True)
class GradientSNR:
    """Per-element moments of a stochastic gradient over repeated draws (see :func:`gradient_snr`).

    Attributes:
        names: one name per parameter (``nn.Module`` parameter names, else ``"params[i]"``).
        mean: per parameter, the mean gradient, shaped like the parameter.
        variance: per parameter, the unbiased variance of the gradient (divisor ``num_draws - 1``).
        num_draws: how many gradients were drawn.

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, *Tighter Variational Bounds are Not
        Necessarily Better* (ICML 2018).
    """

    names: tuple[str, ...]
    mean: tuple[Tensor, ...]
    variance: tuple[Tensor, ...]
    num_draws: int

    @property
    def snr(self) -> tuple[Tensor, ...]:
        """``|mean| / std`` per element; ``0`` where the gradient is exactly zero on every draw,
        ``inf`` where it is nonzero and constant."""
        out = []
        for m, v in zip(self.mean, self.variance):
            ratio = m.abs() / v.sqrt()
            out.append(torch.where((m == 0) & (v == 0), 0.0, ratio))
        return tuple(out)

    @property
    def standard_error(self) -> tuple[Tensor, ...]:
        """Standard error of each :attr:`mean` element, ``sqrt(variance / num_draws)``."""
        return tuple((v / self.num_draws).sqrt() for v in self.variance)

    @property
    def mean_snr(self) -> float:
        """Average of :attr:`snr` over every element of every parameter."""
        return torch.cat([s.flatten() for s in self.snr]).mean().item()

    @property
    def total_variance(self) -> float:
        """Sum of the per-element variances: the trace of the gradient's covariance."""
        return sum(v.sum().item() for v in self.variance)


def _named_params(params: Iterable[Tensor] | nn.Module) -> tuple[tuple[str, ...], list[Tensor]]:
    if isinstance(params, nn.Module):
        pairs = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    elif isinstance(params, Tensor):
        pairs = [("params[0]", params)]
    else:
        pairs = [(f"params[{i}]", p) for i, p in enumerate(params)]
    if not pairs:
        raise ValueError("params must hold at least one tensor that requires grad; got none")
    for name, p in pairs:
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise ValueError(f"params: {name} must be a tensor with requires_grad=True; got {type(p).__name__}")
    return tuple(n for n, _ in pairs), [p for _, p in pairs]


def gradient_snr(loss_fn: Callable[[], Tensor], params: Iterable[Tensor] | nn.Module, num_draws: int) -> GradientSNR:
    """Signal-to-noise ratio of a stochastic gradient, ``|E[g]| / std(g)`` per element.

    Calls ``loss_fn()`` ``num_draws`` times, takes ``torch.autograd.grad`` of each
    scalar with respect to ``params`` (never ``backward``, so ``.grad`` is left as it
    was), and accumulates the mean and variance in float64 with Welford's update, so
    memory does not grow with ``num_draws``.  A parameter the loss does not reach has
    a zero gradient.  Rainforth et al. (2018) show with this measure that the IWAE
    guide gradient's SNR falls as ``O(1 / sqrt(K))``.

    Args:
        loss_fn: builds and returns a fresh scalar loss on each call, including
            the family from the parameters, e.g.
            ``lambda: vt.loss(log_joint, DiagNormal(loc, log_scale.exp()), 8, vt.objectives.iwae,
            vt.estimators.dreg).loss``.
        params: tensors with ``requires_grad=True``, or an ``nn.Module`` (its trainable parameters).
        num_draws: how many gradients to draw, at least 2.

    Returns:
        :class:`GradientSNR` with per-element mean, variance and SNR and their summaries.

    Raises:
        ValueError: for ``num_draws < 2``, no trainable ``params``, a ``loss_fn`` that does
            not return a scalar attached to the graph, or a non-finite gradient.

    References:
        Rainforth et al., Tighter Variational Bounds are Not Necessarily Better (2018).
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"num_draws must be an integer >= 2 (a variance needs two draws); got {num_draws!r}")
    names, tensors = _named_params(params)
    mean = [torch.zeros_like(p, dtype=torch.float64) for p in tensors]
    m2 = [torch.zeros_like(p, dtype=torch.float64) for p in tensors]
    for i in range(num_draws):
        loss = loss_fn()
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor; got {shape}")
        if not loss.requires_grad:
            raise ValueError("loss_fn returned a tensor with no graph: it does not depend on params")
        try:
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        except RuntimeError as err:
            if "second time" not in str(err):
                raise
            raise ValueError(
                "loss_fn reuses a graph that an earlier draw already freed; build everything "
                "derived from params (e.g. the family q) inside loss_fn"
            ) from err
        for name, p, g, mu, acc in zip(names, tensors, grads, mean, m2):
            g = torch.zeros_like(p, dtype=torch.float64) if g is None else g.detach().double()
            if not bool(torch.isfinite(g).all()):
                raise ValueError(f"loss_fn gave a non-finite gradient for {name} at draw {i}")
            delta = g - mu
            mu += delta / (i + 1)
            acc += delta * (g - mu)
    return GradientSNR(
        names=names,
        mean=tuple(mu.to(p.dtype) for mu, p in zip(mean, tensors)),
        variance=tuple((acc / (num_draws - 1)).to(p.dtype) for acc, p in zip(m2, tensors)),
        num_draws=num_draws,
    )


def _is_diag_gaussian(d) -> bool:
    return isinstance(d, (DiagNormal, Normal)) or (
        isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1
    )


def _diag_gaussian(d: Distribution, name: str) -> tuple[Tensor, Tensor]:
    if isinstance(d, DiagNormal):
        return d.loc, d.scale
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist.loc, d.base_dist.scale
    if isinstance(d, Normal):  # read elementwise, its last dimension taken as the latent one
        return d.loc, d.scale
    raise ValueError(
        f"{name} must be a diagonal Gaussian (vitorch DiagNormal, Independent(Normal, 1) or Normal); "
        f"got {type(d).__name__}"
    )


def kl_per_dim(q: Distribution, p: Distribution) -> Tensor:
    """``KL(q || p)`` of two diagonal Gaussians, split over the latent dimensions.

    Per dimension, with ``r = s_q^2 / s_p^2``:
    ``KL_d = (r - 1 - log r) / 2 + (m_q - m_p)^2 / (2 s_p^2)``; the sum over ``d`` is
    the full KL.  A dimension whose KL to the prior is near zero for every datum
    carries no information about the data: it has collapsed.

    Args:
        q: ``DiagNormal`` or ``Independent(Normal, 1)`` with parameters ``[*batch, D]``
            (a plain ``Normal`` is read elementwise, its last dimension as ``D``).
        p: the same kinds; ``[*batch, D]`` or anything that broadcasts against ``q``,
            e.g. the prior ``Normal(0., 1.)``.

    Returns:
        ``[*batch, D]`` non-negative per-dimension KL.  Unlike the other diagnostics it
        keeps the graph, so it can also shape a loss (e.g. free bits, Kingma et al., 2016).

    Raises:
        ValueError: if either is not a diagonal Gaussian, their event sizes differ, or
            their shapes do not broadcast.
    """
    loc_q, scale_q = _diag_gaussian(q, "q")
    loc_p, scale_p = _diag_gaussian(p, "p")
    if q.event_shape and p.event_shape and q.event_shape != p.event_shape:
        raise ValueError(f"q and p have different event shapes: {tuple(q.event_shape)} and {tuple(p.event_shape)}")
    try:
        torch.broadcast_shapes(loc_q.shape, scale_q.shape, loc_p.shape, scale_p.shape)
    except RuntimeError:
        raise ValueError(
            f"q and p do not broadcast: q {tuple(loc_q.shape)}, p {tuple(loc_p.shape)} (parameters [*batch, D])"
        ) from None
    log_r = 2 * (scale_q.log() - scale_p.log())
    # expm1(t) - t keeps its precision when the scales nearly agree (r - 1 - log r ~ t^2 / 2).
    return 0.5 * (torch.expm1(log_r) - log_r) + 0.5 * ((loc_q - loc_p) / scale_p).pow(2)


@dataclass(frozen=True)
class ActiveUnits:
    """Which latent units an encoder uses (see :func:`active_units`).

    Attributes:
        count: number of active units.
        active: ``[D]`` bool, ``activity > threshold``.
        activity: ``[D]`` ``Cov_x(E_q[z_u | x])``, the variance of each encoder mean over the data.
        threshold: the activity a unit must exceed.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016), section 5.2.
    """

    count: int
    active: Tensor
    activity: Tensor
    threshold: float


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < math.inf:
        raise ValueError(f"threshold must be a finite number >= 0; got {threshold!r}")
    return float(threshold)


def _units(activity: Tensor, threshold: float) -> ActiveUnits:
    active = activity > threshold
    return ActiveUnits(count=int(active.sum()), active=active, activity=activity, threshold=threshold)


@torch.no_grad()
def active_units(means: Tensor, threshold: float = 0.01) -> ActiveUnits:
    """Active units of Burda et al. (2016): unit ``u`` is active if ``Cov_x(E_q[z_u | x]) > threshold``.

    A unit whose posterior mean does not move with the input carries no information
    about it: its ``q(z_u | x)`` has collapsed onto one distribution (usually the prior).

    Args:
        means: ``[N, D]`` encoder means ``E_q[z | x_n]`` over a data set, ``N >= 2``.
        threshold: the activity above which a unit counts as active (Burda et al.: 0.01).

    Returns:
        :class:`ActiveUnits`; ``activity`` is the unbiased variance over the ``N`` inputs.

    References:
        Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016), section 5.2.
    """
    threshold = _check_threshold(threshold)
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[0] < 2:
        shape = tuple(means.shape) if isinstance(means, Tensor) else type(means).__name__
        raise ValueError(f"means must be a [N, D] tensor with N >= 2 inputs; got {shape}")
    if not bool(torch.isfinite(means).all()):
        raise ValueError("means must be finite; found NaN or inf")
    return _units(means.var(0), threshold)


@dataclass(frozen=True)
class CollapseDiagnostics:
    """Posterior-collapse summary of an encoder over a data set (see :func:`collapse_diagnostics`).

    Attributes:
        units: the :class:`ActiveUnits` of the encoder means.
        kl: ``[D]`` the data average of :func:`kl_per_dim` against the prior, or ``None``
            when the encoder returns means only.
        num_inputs: how many inputs were encoded.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016): active units.
        Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio, *Generating Sentences from a Continuous Space*
        (CoNLL 2016): posterior collapse and the per-dimension KL.
    """

    units: ActiveUnits
    kl: Tensor | None
    num_inputs: int


def _batches(data: Tensor | Iterable, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    for batch in data:
        # DataLoaders over labelled sets yield (x, y); the encoder reads x.
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def collapse_diagnostics(
    encoder: Callable[[Tensor], Tensor | Distribution],
    data: Tensor | Iterable,
    prior: Distribution | None = None,
    threshold: float = 0.01,
    batch_size: int = 256,
) -> CollapseDiagnostics:
    """Active units and per-dimension KL to the prior of an encoder, streamed over a data set.

    Runs ``encoder`` on each batch without gradients (it does not switch the module
    to ``eval()``; do that first if it has dropout or batch norm).  The means'
    variance is combined across batches with Chan et al.'s pairwise update, so the
    data set is never held in memory as encodings.

    Args:
        encoder: ``x [n, ...] -> `` either the means ``[n, D]`` or a distribution with
            ``.mean`` ``[n, D]`` (e.g. a :class:`~vitorch.DiagNormal` head's output).
        data: a tensor ``[N, ...]`` (split into ``batch_size`` rows) or an iterable of
            batches such as a ``DataLoader``; a batch that is a tuple or list gives its
            first element to the encoder.
        prior: ``p(z)`` for the KL, a diagonal Gaussian broadcasting against ``[n, D]``;
            the standard normal when ``None`` and the encoder returns a diagonal Gaussian.
        threshold: activity threshold of :func:`active_units`.
        batch_size: rows per batch when ``data`` is a tensor.

    Returns:
        :class:`CollapseDiagnostics`.

    Raises:
        ValueError: for a bad ``threshold`` or ``batch_size``, fewer than 2 inputs, encoder
            output that is not ``[n, D]``, or a ``prior`` given for an encoder that returns
            means only (or a non-diagonal distribution).

    References:
        Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016).
        Chan, Golub & LeVeque, Algorithms for Computing the Sample Variance (1983).
    """
    threshold = _check_threshold(threshold)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    n, mean, m2, kl_sum = 0, None, None, None
    for x in _batches(data, batch_size):
        out = encoder(x)
        means = out.mean if isinstance(out, Distribution) else out
        if not isinstance(means, Tensor) or means.dim() != 2:
            shape = tuple(means.shape) if isinstance(means, Tensor) else type(means).__name__
            raise ValueError(f"encoder output (its mean) must be [n, D]; got {shape}")
        if _is_diag_gaussian(out):
            kl = kl_per_dim(out, prior if prior is not None else Normal(0.0, 1.0)).sum(0)
            kl_sum = kl if kl_sum is None else kl_sum + kl
        elif prior is not None:
            raise ValueError(
                f"prior is given but the encoder returns {type(out).__name__}, not a diagonal Gaussian; "
                "the KL needs DiagNormal, Independent(Normal, 1) or Normal"
            )
        nb = means.shape[0]
        batch_mean = means.double().mean(0)
        batch_m2 = (means.double() - batch_mean).pow(2).sum(0)
        if mean is None:
            n, mean, m2 = nb, batch_mean, batch_m2
            continue
        if batch_mean.shape != mean.shape:
            raise ValueError(f"encoder output changed its D between batches: {mean.shape[0]} then {means.shape[1]}")
        delta = batch_mean - mean
        mean = mean + delta * (nb / (n + nb))
        m2 = m2 + batch_m2 + delta.pow(2) * (n * nb / (n + nb))
        n += nb
    if n < 2:
        raise ValueError(f"data must hold at least 2 inputs for a variance; got {n}")
    if not bool(torch.isfinite(m2).all()):
        raise ValueError("encoder means must be finite; found NaN or inf")
    units = _units((m2 / (n - 1)).to(means.dtype), threshold)
    return CollapseDiagnostics(units=units, kl=None if kl_sum is None else kl_sum / n, num_inputs=n)
