"""Posterior collapse: per-dimension KL and active units of a VAE's latent code.

References:
    Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (ICLR 2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from ..families import DiagNormal

__all__ = ["kl_per_dim", "active_units", "ActiveUnits", "collapse_diagnostics", "CollapseDiagnostics"]


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
    """Which latent units an encoder uses (see `active_units`).

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
        `ActiveUnits`; ``activity`` is the unbiased variance over the ``N`` inputs.

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
    """Posterior-collapse summary of an encoder over a data set (see `collapse_diagnostics`).

    Attributes:
        units: the `ActiveUnits` of the encoder means.
        kl: ``[D]`` the data average of `kl_per_dim` against the prior, or ``None``
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
            ``.mean`` ``[n, D]`` (e.g. a `vitorch.DiagNormal` head's output).
        data: a tensor ``[N, ...]`` (split into ``batch_size`` rows) or an iterable of
            batches such as a ``DataLoader``; a batch that is a tuple or list gives its
            first element to the encoder.
        prior: ``p(z)`` for the KL, a diagonal Gaussian broadcasting against ``[n, D]``;
            the standard normal when ``None`` and the encoder returns a diagonal Gaussian.
        threshold: activity threshold of `active_units`.
        batch_size: rows per batch when ``data`` is a tensor.

    Returns:
        `CollapseDiagnostics`.

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
