"""Hierarchical models with one local parameter block per group, trained on minibatches of groups.

A model with global parameters ``g`` (population mean, scales) and local parameters
``l_i`` per group ``i = 1..N`` (one effect per school, per student, per county),

    ``log p = log p(g) + sum_i log p(l_i, y_i | g)``,

is fitted with the structured guide ``q(g) prod_i q(l_i | g)``: a full-rank Gaussian on
the globals and, per group, a diagonal Gaussian whose mean moves linearly with the
globals, ``l_i | g ~ N(m_i + C_i (g - mu_g), diag(s_i^2))`` (all on the unconstrained
scale).  The linear term keeps the funnel-shaped dependence of locals on a scale
parameter that a mean-field guide loses; when ``l_i | g`` is Gaussian with a mean
linear in ``g`` the guide family contains the exact posterior.

Training reads a minibatch of ``B`` groups: each group's share of the ELBO is
``E_q[log p(l_i, y_i | g) - log q(l_i | g)] + E_q[log p(g) - log q(g)] / N``, so
``N`` times the batch mean is an unbiased estimate of the full ELBO (the local terms
scaled by ``N / B``) and ``vt.fit`` trains 10^5 groups on minibatches.

References:
    Hoffman, Blei, Wang & Paisley, *Stochastic Variational Inference* (JMLR 2013):
    subsampled local terms scaled by ``N / B``.
    Hoffman & Blei, *Structured Stochastic Variational Inference* (AISTATS 2015):
    locals conditioned on the globals.
    Agrawal & Domke, *Amortized Variational Inference for Simple Hierarchical Models*
    (NeurIPS 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .._output import LossOutput
from ..families import DiagNormal, FullRankNormal
from .model import Model
from .site import Site

__all__ = ["HierarchicalModel", "StructuredGuide", "HierarchicalVI"]


class HierarchicalModel(nn.Module):
    """Global sites, and local sites repeated once per group.

    Args:
        global_log_prior: ``p_global -> log p(g)``, ``[*sample]`` (each global value
            ``[*sample, *shape]``).
        local_log_joint: ``(p_global, p_local, batch) -> [*sample, B]``, each group's
            ``log p(l_i, y_i | g)``; global values are ``[*sample, *shape]``, local
            values ``[*sample, B, *shape]`` and ``batch`` is what the data loader gives
            (its first element the group indices ``[B]``).
        global_sites: ``{name: Site}``.
        local_sites: ``{name: Site}`` with each group's shape.
        num_groups: ``N``.

    Attributes:
        globals, locals: `vitorch.model.Model` s of the two blocks (their
            ``constrain`` and Jacobians); ``dim_global``, ``dim_local``: ``D_g`` and
            the per-group ``D_l``.

    References:
        Hoffman et al., *Stochastic Variational Inference* (JMLR 2013).
    """

    def __init__(
        self,
        global_log_prior: Callable[[dict[str, Tensor]], Tensor],
        local_log_joint: Callable[[dict[str, Tensor], dict[str, Tensor], object], Tensor],
        global_sites: Mapping[str, Site],
        local_sites: Mapping[str, Site],
        num_groups: int,
    ):
        super().__init__()
        if not callable(local_log_joint):
            raise TypeError(
                f"HierarchicalModel: local_log_joint must be callable; got {type(local_log_joint).__name__}"
            )
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"HierarchicalModel: num_groups must be an integer >= 1; got {num_groups!r}")
        shared = set(global_sites) & set(local_sites)
        if shared:
            raise ValueError(f"HierarchicalModel: site names used twice: {sorted(shared)}")
        self.globals = Model(global_log_prior, global_sites)
        self.locals = Model(_unused, local_sites)
        self.local_log_joint = local_log_joint
        self.num_groups = num_groups
        self.dim_global, self.dim_local = self.globals.dim, self.locals.dim

    def log_density(self, z_global: Tensor, z_local: Tensor, batch) -> tuple[Tensor, Tensor]:
        """``(log p(g) + ladj [*sample], log p(l_i, y_i | g) + ladj_i [*sample, B])`` on the unconstrained scale.

        Args:
            z_global: ``[*sample, D_g]``.
            z_local: ``[*sample, B, D_l]``, the batch's groups.
            batch: passed to ``local_log_joint``.
        """
        values_g, ladj_g = self.globals._constrain_and_ladj(self.globals._check_z(z_global, "log_density"))
        values_l, ladj_l = self.locals._constrain_and_ladj(self.locals._check_z(z_local, "log_density"))
        log_g = self.globals.log_joint(values_g) + ladj_g
        log_l = self.local_log_joint(values_g, values_l, batch)
        expected = z_local.shape[:-1]
        if not isinstance(log_l, Tensor) or log_l.shape != expected:
            got = tuple(log_l.shape) if isinstance(log_l, Tensor) else type(log_l).__name__
            raise ValueError(f"local_log_joint must return [*sample, B] = {tuple(expected)}; got {got}")
        return log_g, log_l + ladj_l


def _indices(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _unused(values):
    raise RuntimeError("a HierarchicalModel's local block is read through local_log_joint")


class StructuredGuide(nn.Module):
    """``q(g) prod_i q(l_i | g)``: full-rank globals, per-group Gaussians linear in the globals.

    Args:
        model: the `HierarchicalModel`.
        init_scale: starting standard deviation (unconstrained scale).
        dtype: parameters' dtype.

    Parameters: the global ``loc [D_g]``, ``log_scale [D_g]``, ``lower [D_g, D_g]``
    (as `vitorch.model.AutoFullRankNormal`), and per group ``local_loc [N, D_l]``,
    ``local_log_scale [N, D_l]``, ``coupling [N, D_l, D_g]`` (starts at zero).

    ``global_family()`` is a `vitorch.FullRankNormal` over ``[D_g]``;
    ``local_family(z_global [*sample, D_g], idx [B])`` a `vitorch.DiagNormal` with
    batch shape ``[*sample, B]``.  Both have ``detach()``, so STL works.

    References:
        Hoffman & Blei, *Structured Stochastic Variational Inference* (AISTATS 2015).
    """

    default_lr = 0.02

    def __init__(self, model: HierarchicalModel, init_scale: float = 0.1, dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(model, HierarchicalModel):
            raise TypeError(f"StructuredGuide: model must be a HierarchicalModel; got {type(model).__name__}")
        dtype = dtype or torch.get_default_dtype()
        n, dg, dl = model.num_groups, model.dim_global, model.dim_local
        log_s = math.log(init_scale)
        self.loc = nn.Parameter(model.globals.init(dtype))
        self.log_scale = nn.Parameter(torch.full((dg,), log_s, dtype=dtype))
        self.lower = nn.Parameter(torch.zeros(dg, dg, dtype=dtype))
        self.local_loc = nn.Parameter(model.locals.init(dtype).expand(n, dl).clone())
        self.local_log_scale = nn.Parameter(torch.full((n, dl), log_s, dtype=dtype))
        self.coupling = nn.Parameter(torch.zeros(n, dl, dg, dtype=dtype))
        self.register_buffer("eye", torch.eye(dg, dtype=dtype), persistent=False)

    def global_family(self) -> FullRankNormal:
        tril = self.log_scale.exp().unsqueeze(-1) * (self.eye + self.lower.tril(-1))
        return FullRankNormal(self.loc, tril, validate_args=False)

    def local_family(self, z_global: Tensor, idx: Tensor, stop: bool = False) -> DiagNormal:
        """``q(l_idx | g)``, batch ``[*sample, B]``; ``stop=True`` detaches the parameters but not ``z_global``
        (the joint density at stopped parameters that STL reads still depends on the globals' draw)."""
        grab = (lambda t: t.detach()) if stop else (lambda t: t)
        shift = z_global - grab(self.loc)  # [*sample, D_g]
        coupled = torch.einsum("bld,...d->...bl", grab(self.coupling)[idx], shift)  # [*sample, B, D_l]
        loc = grab(self.local_loc)[idx] + coupled
        return DiagNormal(loc, grab(self.local_log_scale)[idx].exp().expand_as(loc), validate_args=False)

    def forward(self, idx: Tensor):
        """``(q(g), a function z_global -> q(l_idx | g))`` for the groups ``idx [B]``."""
        return self.global_family(), lambda z_global: self.local_family(z_global, idx)


class HierarchicalVI(nn.Module):
    """The minibatch ELBO of a `HierarchicalModel` under a `StructuredGuide`, for ``vt.fit``.

    Args:
        model, guide: the model and its guide: a `StructuredGuide` (given the batch's
            group indices) or a guide that reads the groups' data, such as
            `vitorch.model.amortized.AmortizedGuide` (given the whole batch).
        num_particles: ``K`` draws of the globals (each with its own locals).
        stl: evaluate ``log q`` at stopped parameters (sticking the landing).

    ``forward(batch)`` takes a batch whose first element is the group indices ``[B]``
    (give ``vt.fit`` the tuple ``(torch.arange(N), *per-group data)``) and returns a
    `vitorch.LossOutput` with ``bound [B]``, each group's share of the ELBO.

    References:
        Hoffman et al., *Stochastic Variational Inference* (JMLR 2013);
        Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017).
    """

    def __init__(self, model: HierarchicalModel, guide: nn.Module, num_particles: int = 1, stl: bool = True):
        super().__init__()
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"HierarchicalVI: num_particles must be an integer >= 1; got {num_particles!r}")
        self.model, self.guide = model, guide
        self.num_particles, self.stl = num_particles, stl

    @property
    def default_lr(self) -> float:
        return self.guide.default_lr

    def forward(self, batch) -> LossOutput:
        idx = _indices(batch)
        if not isinstance(idx, Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError("HierarchicalVI: the batch's first element must be the group indices, an integer [B]")
        K, N = self.num_particles, self.model.num_groups
        q_g = self.guide.global_family()
        z_g = q_g.rsample((K,))  # [K, D_g]
        key = self._local_key(idx, batch)
        q_l = self.guide.local_family(z_g, key)  # batch [K, B]
        z_l = q_l.rsample()  # [K, B, D_l]
        if self.stl:
            log_q_g = q_g.detach().log_prob(z_g)
            log_q_l = self.guide.local_family(z_g, key, stop=True).log_prob(z_l)
        else:
            log_q_g, log_q_l = q_g.log_prob(z_g), q_l.log_prob(z_l)
        log_p_g, log_p_l = self.model.log_density(z_g, z_l, batch)
        per_group = (log_p_l - log_q_l) + ((log_p_g - log_q_g) / N).unsqueeze(-1)  # [K, B]
        bound = per_group.mean(0)
        return LossOutput(-bound.mean(), bound.detach())

    def _local_key(self, idx: Tensor, batch):
        # A structured guide stores parameters per group and reads the indices; any other
        # guide (an amortized one) computes each group's posterior from the batch's data.
        return idx if isinstance(self.guide, StructuredGuide) else batch

    def sample(self, num_samples: int, batch=None) -> dict[str, Tensor]:
        """Named constrained draws: globals ``[S, *shape]``, locals ``[S, N, *shape]`` (no gradient).

        Args:
            num_samples: ``S``.
            batch: for a guide that reads the data (amortized), the groups to draw locals
                for, ``(idx [B], data...)``, seen in training or new; locals are then
                ``[S, B, *shape]``.  A `StructuredGuide` draws all ``N`` groups and needs none.
        """
        with torch.no_grad():
            z_g = self.guide.global_family().sample((num_samples,))
            if isinstance(self.guide, StructuredGuide):
                key = torch.arange(self.model.num_groups, device=z_g.device) if batch is None else _indices(batch)
            elif batch is None:
                raise ValueError("HierarchicalVI.sample: this guide reads the groups' data; pass batch=(idx, data...)")
            else:
                key = batch
            z_l = self.guide.local_family(z_g, key).sample()
            return {**self.model.globals.constrain(z_g), **self.model.locals.constrain(z_l)}
