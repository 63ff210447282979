"""The transform primitive a `vitorch.Flow` is built from.

A transform is an `torch.nn.Module` mapping ``x [*shape, D]`` to ``y [*shape, D]``
in the *sampling* direction (base noise towards the variational sample) and returning
``log|det dy/dx|`` with it, so a flow's ``rsample_and_log_prob`` is one pass
(Rezende & Mohamed, 2015; zuko's ``call_and_ladj``).  Every transform may read a
context ``[*batch, C]`` (an encoder's features) that broadcasts against the leading
dimensions of ``x``; an amortized posterior is then "encoder output -> flow".

Inverses: where one exists in closed form or by a monotone scalar solve,
`Transform.inverse_and_ladj` gives ``x`` and ``log|det dx/dy|``.  A flow's
``log_prob`` needs it, and so do sticking-the-landing and DReG, which evaluate log q
at stopped parameters on the flow's own samples.  A transform without one raises
`NoInverseError`.

The interface lives here, beside `vitorch.Flow`, so that the family depends on
nothing in `vitorch.flows`; the concrete transforms there build on it (and
`vitorch.flows` re-exports it under its old names).

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015).
    Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.distributions import constraints

__all__ = ["Transform", "NoInverseError", "check_features"]


class NoInverseError(NotImplementedError):
    """Raised when a transform has no inverse, so ``log_prob`` (and STL/DReG) cannot evaluate it.

    STL and DReG evaluate log q at stopped parameters on the flow's own samples,
    which for a flow is the inverse pass.

    References:
        Roeder, Wu & Duvenaud, Sticking the Landing (NeurIPS 2017);
        Tucker, Lawson, Gu & Maddison, Doubly Reparameterized Gradient Estimators (ICLR 2019).
    """


def check_features(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``; otherwise raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


class Transform(nn.Module):
    """Base class: a bijection (or injection onto ``codomain``) of ``R^D`` with its log-determinant.

    Subclasses implement `call_and_ladj` and, where possible,
    `inverse_and_ladj`.  Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a
    context ``[*batch, C]`` broadcasts against ``*shape``'s trailing dimensions.

    Attributes:
        dim: ``D``, the event size.
        domain, codomain: torch constraints of an input and output *element*
            (``real`` for most transforms, ``positive`` after ``Softplus``).

    References:
        Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015);
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021).
    """

    domain = constraints.real
    codomain = constraints.real
    accepts_hint = False  # True if inverse_and_ladj takes hint=<guess of x> to speed an iterative solve

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_features("dim", dim)

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = T(x)`` and ``log|det dy/dx|``: ``[*shape, D] -> ([*shape, D], [*shape])``."""
        raise NotImplementedError

    def inverse_and_ladj(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = T^{-1}(y)`` and ``log|det dx/dy|`` (the inverse map's own log-determinant)."""
        raise NoInverseError(
            f"{type(self).__name__} has no inverse, so a flow containing it cannot evaluate log_prob(z); "
            "sticking-the-landing and DReG need log q at stopped parameters, which is log_prob, and thus "
            "the inverse: use reparam with rsample_and_log_prob, or an invertible transform"
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.call_and_ladj(x, context)[0]

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return self.inverse_and_ladj(y, context)[0]

    def _check_input(self, x: Tensor, name: str = "x") -> None:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}(dim={self.dim}): {name} must end in {self.dim}; got {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
