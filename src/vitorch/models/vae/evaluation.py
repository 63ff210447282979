"""Held-out evaluation of a VAE: IWAE log-likelihood at large K, ELBO, KL and active units.

All of them come from one streamed pass: for each batch the encoder runs once and
the ``K`` particles are drawn in chunks, keeping a running log-sum-exp of the
log-weights (for ``log p(x) ~ IWAE_K``, Burda et al., 2016) and running sums of
``log w``, ``log p(x | z)`` and ``log q(z | x) - log p(z)`` (for the ELBO, the
reconstruction term and the KL).  Memory is bounded by ``max_elements`` decoder
outputs per chunk, whatever ``K`` is.  The bound scored is always the plain
``log p(z) + log p(x | z) - log q(z | x)``, whatever β or MMD weight the model
trained with.

Under ``torch.distributed`` (a process group of more than one process, e.g. inside a
``vt.fit`` run under ``torchrun``) the K particles are split across the ranks: each rank
draws its share with its own random stream, and the running log-sum-exp and sums are
combined with one all-reduce each, so every rank returns the IWAE_K estimate over all K
particles at 1/world of the cost.  Pass ``split_particles=False`` to have every rank draw all
K itself.

Every function takes the data as a tensor ``[N, *event]`` or as what `vitorch.fit`
takes as ``eval_data``: a map-style ``Dataset`` (its items, or their first entries, are
stacked; an `vitorch.data.ImageData` gives `vitorch.data.ImageData.tensor`,
a dynamically binarized set being drawn once per call with a fixed seed, so that repeated
evaluations score the same binary images) or a tuple of tensors (the first is read).

References:
    Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016),
    sections 5.1 (test log-likelihood with K = 5000) and 5.2 (active units).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.utils.data import Dataset

from ...data import ImageData
from ...diagnostics import active_units, collapse_diagnostics
from ...training.distributed import logsumexp_over_ranks

__all__ = ["iwae_log_likelihood", "evaluate", "latent_means"]


def _check(num_particles: int, batch_size: int, max_elements: int) -> None:
    for name, v in (("num_particles", num_particles), ("batch_size", batch_size), ("max_elements", max_elements)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}")


# The seed of the one binarization drawn for a dynamically binarized ImageData.
_BINARIZE_SEED = 0


def _as_tensor(data) -> Tensor:
    """Held-out data as one tensor ``[N, *event]``: a tensor, a tuple of tensors or a map-style ``Dataset``.

    Args:
        data: a tensor ``[N, *event]``; a tuple or list of tensors sharing the first
            dimension (the first is the data, as in an ``(x, y)`` set); an
            `vitorch.data.ImageData` (`vitorch.data.ImageData.tensor`,
            drawn with a fixed seed when the set binarizes dynamically); or any other
            map-style ``Dataset`` whose items are tensors or tuples led by one.

    Returns:
        ``[N, *event]``.

    Raises:
        TypeError: for anything else, naming its type.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (2016), section 5
        (a test set binarized once).
    """
    if isinstance(data, Tensor):
        return data
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        return data[0]
    if isinstance(data, ImageData):
        return data.tensor(generator=torch.Generator().manual_seed(_BINARIZE_SEED))
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        items = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
        if items and all(isinstance(t, Tensor) for t in items):
            return torch.stack(items)
    raise TypeError(
        "data must be a tensor [N, *event], a tuple of tensors or a map-style Dataset of tensors; "
        f"got {type(data).__name__}"
    )


def _draw(q: Distribution, k: int) -> tuple[Tensor, Tensor]:
    if hasattr(q, "rsample_and_log_prob"):
        return q.rsample_and_log_prob((k,))
    z = q.sample((k,))
    return z, q.log_prob(z)


def _share(num_particles: int, split: bool) -> int:
    """This rank's number of particles: K split as evenly as possible over the ranks (or all K)."""
    if not (split and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return num_particles
    world, rank = dist.get_world_size(), dist.get_rank()
    return num_particles // world + (rank < num_particles % world)


@torch.no_grad()
def _stream(
    model,
    x: Tensor,
    num_particles: int,
    batch_size: int,
    chunk_size: int | None,
    max_elements: int,
    split_particles: bool = True,
):
    """Per datum ``(log-sum-exp of log w, sum log w, sum log p(x|z), sum KL terms)`` over the K particles
    (over all ranks' shares when they are split across a process group)."""
    _check(num_particles, batch_size, max_elements)
    num_particles = _share(num_particles, split_particles)
    x = _as_tensor(x)
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be [N, *event] with N >= 1; got {tuple(x.shape)}")
    entries = math.prod(x.shape[1:]) * model.likelihood.params_per_entry
    results = []
    for xb in x.split(batch_size):
        chunk = chunk_size or max(1, max_elements // (xb.shape[0] * entries))
        q = model.encoder(xb)
        # A VAE scores log p(x | z) with its own log_likelihood (the kernel call of its decoder's output).
        log_likelihood = getattr(model, "log_likelihood", None) or (
            lambda z, xb: model.likelihood.log_prob(model.decoder(z), xb)
        )
        lse = torch.full(xb.shape[:1], -math.inf, dtype=xb.dtype, device=xb.device)
        s_w, s_lik, s_kl = (torch.zeros_like(lse) for _ in range(3))
        done = 0
        while done < num_particles:
            k = min(chunk, num_particles - done)
            z, log_q = _draw(q, k)
            log_lik = log_likelihood(z, xb)
            kl_terms = log_q - model.log_prior(z)
            log_w = log_lik - kl_terms
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
            s_w += log_w.sum(0)
            s_lik += log_lik.sum(0)
            s_kl += kl_terms.sum(0)
            done += k
        results.append((lse, s_w, s_lik, s_kl))
    lse, *sums = (torch.cat(parts) for parts in zip(*results))
    if split_particles:  # the identity outside a process group
        lse = logsumexp_over_ranks(lse)
        if dist.is_available() and dist.is_initialized():
            for s in sums:
                dist.all_reduce(s)
    return [lse, *sums]


def iwae_log_likelihood(
    model: nn.Module,
    x: Tensor | Dataset | Sequence[Tensor],
    num_particles: int = 5000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_elements: int = 1 << 22,
    split_particles: bool = True,
) -> Tensor:
    """``log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k | x)`` per datum, drawn in memory-bounded chunks.

    Args:
        model: a `vitorch.models.vae.VAE` (anything with ``encoder``,
            ``decoder``, ``likelihood`` and ``log_prior``).
        x: ``[N, *event]`` data (binarized once for a Bernoulli decoder), or a ``Dataset``
            or tuple of tensors (see the module notes).
        num_particles: ``K`` (Burda et al. use 5000).
        batch_size: data per encoder call.
        chunk_size: particles per draw; default as many as keep the decoder's
            output under ``max_elements`` entries.
        max_elements: memory bound used when ``chunk_size`` is ``None``.
        split_particles: under a process group, split the K particles across the ranks
            (see the module notes); ``False``: every rank draws all K.

    Returns:
        ``[N]`` the IWAE_K estimates (a stochastic lower bound on ``log p(x)``).

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (2016),
        section 5.1 (the test log-likelihood at K = 5000).
    """
    lse = _stream(model, x, num_particles, batch_size, chunk_size, max_elements, split_particles)[0]
    return lse - math.log(num_particles)


@torch.no_grad()
def latent_means(
    model: nn.Module, x: Tensor | Dataset | Sequence[Tensor], batch_size: int = 256, num_draws: int = 64
) -> Tensor:
    """Encoder means ``E_q[z | x]`` ``[N, D]``: the family's ``mean``, or a Monte Carlo average of ``num_draws``.

    Args:
        model: a VAE (anything with an ``encoder`` returning a distribution).
        x: ``[N, *event]`` data, or a ``Dataset`` or tuple of tensors (see the module notes).
        batch_size: data per encoder call.
        num_draws: draws averaged for a family without a closed-form mean (a flow).

    Returns:
        ``[N, D]`` the posterior means, what the active-unit count reads.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (2016),
        section 5.2 (active units from ``Cov_x E_q[z | x]``).
    """
    out = []
    for xb in _as_tensor(x).split(batch_size):
        q = model.encoder(xb)
        try:
            out.append(q.mean)
        except NotImplementedError:  # a flow has no closed-form mean
            out.append(q.sample((num_draws,)).mean(0))
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor | Dataset | Sequence[Tensor],
    num_particles: int = 5000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_elements: int = 1 << 22,
    threshold: float = 0.01,
    split_particles: bool = True,
) -> dict[str, float]:
    """Test metrics of a VAE, averaged over the data ``x [N, *event]`` (``N >= 2``).

    Args:
        model: a `vitorch.models.vae.VAE`.
        x: ``[N, *event]`` data, or a ``Dataset`` or tuple of tensors as ``vt.fit`` takes
            for ``eval_data`` (see the module notes).
        num_particles: ``K`` particles per datum for the IWAE bound.
        batch_size: data per encoder call.
        chunk_size: particles per draw; default as many as keep the decoder's output
            under ``max_elements`` entries.
        max_elements: memory bound used when ``chunk_size`` is ``None``.
        threshold: the active-unit cut on ``Cov_x E_q[z_u]``.
        split_particles: under a process group, split the K particles across the ranks
            (see the module notes); ``False``: every rank draws all K.

    Returns:
        ``{"log_likelihood", "elbo", "reconstruction", "kl", "active_units", "num_particles", "num_data"}``:
        IWAE_K (nats per datum), the ELBO and its two terms ``E_q log p(x|z)`` and
        ``KL(q(z|x) || p(z))`` estimated from the same K particles, and the number of
        latent units with ``Cov_x E_q[z_u] > threshold`` (Burda et al., 2016).
    """
    x = _as_tensor(x)
    lse, s_w, s_lik, s_kl = _stream(model, x, num_particles, batch_size, chunk_size, max_elements, split_particles)
    K = num_particles
    probe = model.encoder(x[:2])
    if isinstance(probe, Distribution) and _has_mean(probe):
        units = collapse_diagnostics(model.encoder, x, threshold=threshold, batch_size=max(batch_size, 2)).units
    else:
        units = active_units(latent_means(model, x), threshold)
    return {
        "log_likelihood": float((lse - math.log(K)).mean()),
        "elbo": float((s_w / K).mean()),
        "reconstruction": float((s_lik / K).mean()),
        "kl": float((s_kl / K).mean()),
        "active_units": units.count,
        "num_particles": K,
        "num_data": int(x.shape[0]),
    }


def _has_mean(q: Distribution) -> bool:
    try:
        return q.mean is not None
    except NotImplementedError:
        return False
