"""The estimator protocol: `Particles` (one draw) and the `Estimator` base class.

Kept apart from `vitorch.estimators` so that the deterministic rules in their own modules
(`vitorch.quadrature`, `vitorch.unscented`) and the Monte Carlo estimators share it
without an import cycle; `vitorch.estimators` exports both.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from torch.distributions import Distribution

from .objectives import Objective

__all__ = ["Particles", "Estimator"]


def _family_name(q: Distribution) -> str:
    base = getattr(q, "base_dist", None)
    return f"{type(q).__name__}({_family_name(base)})" if base is not None else type(q).__name__


class Particles(NamedTuple):
    """One draw of K particles.

    Attributes:
        z: ``[K, *batch, *event]`` the particles returned to the caller.
        read: what the log-joint reads: ``z`` itself, or a view of it on which a
            backward hook rescales the guide's gradient.
        log_q: ``[K, *batch]`` log-density of the particles (at stopped parameters for
            STL and DReG; detached particles for score estimators).
        correction: ``[K, *batch]`` an RSVI acceptance log-density, or ``None``.
        weights: ``[K, *batch]`` the particles' weights under a deterministic rule
            (enumeration: ``q(z_k)``; sigma points: the unscented weights), summing to
            one over particles; ``None`` for K i.i.d. draws (each ``1/K``).

    References:
        Naesseth, Ruiz, Linderman & Blei (2017) for the acceptance correction;
        Julier & Uhlmann (1997) for weighted sigma points.
    """

    z: Tensor
    read: Tensor
    log_q: Tensor
    correction: Tensor | None
    weights: Tensor | None = None


class Estimator:
    """Base class: ``draw(q, K, objective) -> Particles`` and ``surrogate(...) -> [*batch]``.

    References:
        Mohamed, Rosca, Figurnov & Mnih, *Monte Carlo Gradient Estimation in Machine
        Learning* (JMLR 2020), for the pathwise/score taxonomy used here.
    """

    name = "estimator"
    needs_rsample = False

    def reasons(self, objective: Objective, q: Distribution, num_particles: int) -> list[str]:
        """Why this estimator cannot serve ``objective`` with ``q`` and ``K``; empty if it can."""
        if self.needs_rsample and not getattr(q, "has_rsample", False):
            return [
                f"{self.name} is a pathwise estimator and needs rsample, but {_family_name(q)} has none; "
                "use score() or vimco"
            ]
        return []

    def particle_count(self, q: Distribution, num_particles: int) -> int:
        """How many particles ``draw`` returns for ``K = num_particles``: K itself for random
        draws; a deterministic rule's own number (the support's size, 2D + 1 sigma points)."""
        return num_particles

    def draw(self, q: Distribution, num_particles: int, objective: Objective) -> Particles:
        raise NotImplementedError

    def surrogate(
        self, objective: Objective, particles: Particles, log_p: Tensor, log_w: Tensor, bound: Tensor, context=None
    ) -> Tensor | None:
        """``[*batch]`` ascent surrogate: its gradient is this estimator's gradient of the objective.

        ``bound [*batch]`` is ``objective(log_w)`` with its graph.  ``None`` means the
        gradient of the bound itself is this estimator's (reparameterization with one set
        of weights for model and guide), so `vitorch.loss` differentiates the bound."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name
