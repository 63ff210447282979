"""``Site``: one named parameter of a model, its shape, its support and where it starts.

A site is a declaration, not a tensor: ``Site(shape=(8,), constraint=constraints.positive)``
says the model reads a positive ``[*sample, 8]`` value under its name.  The model builds
the unconstrained parameterization from it (`vitorch.model.bijections`).

References:
    Kucukelbir, Tran, Ranganath, Gelman & Blei, *Automatic Differentiation Variational
    Inference* (JMLR 2017): sites declared with a support, inferred on the unconstrained space.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Transform, constraints

from .bijections import Bijection, bijection_for

__all__ = ["Site"]


def _as_shape(shape) -> torch.Size:
    if isinstance(shape, bool):
        raise TypeError(f"Site shape must be an int or a tuple of ints; got {shape!r}")
    if isinstance(shape, numbers.Integral):
        shape = (int(shape),)
    if not isinstance(shape, (Sequence, torch.Size)) or isinstance(shape, str):
        raise TypeError(f"Site shape must be an int or a tuple of ints; got {shape!r}")
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"Site shape must hold only ints; got {tuple(shape)!r}")
    if any(int(s) < 1 for s in shape):
        raise ValueError(f"Site shape must have positive sizes; got {tuple(shape)}")
    return torch.Size(int(s) for s in shape)


class Site:
    """A named, possibly constrained parameter of a `vitorch.model.Model`.

    Args:
        shape: the constrained value's shape (``()`` for a scalar, ``(3,)`` for a
            3-simplex, ``(3, 3)`` for a correlation Cholesky factor or a covariance).
            The model hands ``log_joint`` a ``[*sample, *shape]`` tensor.
        constraint: the support, a `torch.distributions.constraints` object:
            ``real`` (default), ``positive``, ``greater_than(a)``, ``less_than(b)``,
            ``interval(a, b)``, ``unit_interval``, ``simplex``, ``lower_cholesky``,
            ``corr_cholesky``, ``positive_definite``,
            `vitorch.model.ordered_vector`, or any constraint that
            ``torch.distributions.biject_to`` knows (including your registrations).
        transform: instead of a constraint, your own bijective
            ``torch.distributions.Transform`` from unconstrained space onto the
            support (its ``inverse_shape(shape)`` gives the unconstrained block).
        init: a constrained starting value of ``shape`` inside the support; default
            the constraint's canonical point, the image of ``u = 0`` (0, 1, the
            interval's midpoint, the uniform simplex, the identity matrix, ...).

    Raises:
        TypeError: for a shape that is not ints, a constraint that is not a torch
            ``Constraint``, a non-bijective transform or a non-floating ``init``.
        ValueError: for a non-positive size, a shape the constraint cannot have, a
            constraint without a known bijection, or an ``init`` of the wrong shape or
            outside the support.

    Example:
        >>> from torch.distributions import constraints as C
        >>> Site(shape=(3,), constraint=C.simplex).bijection.size   # 2 unconstrained reals
        2

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017), sec. 2.3.
    """

    def __init__(
        self,
        shape: int | Sequence[int] = (),
        constraint: constraints.Constraint = constraints.real,
        *,
        transform: Transform | None = None,
        init: Tensor | float | None = None,
    ):
        self.shape = _as_shape(shape)
        if not isinstance(constraint, constraints.Constraint):
            raise TypeError(
                f"Site constraint must be a torch.distributions.constraints.Constraint; got {type(constraint).__name__}"
            )
        if transform is not None and constraint is not constraints.real:
            raise ValueError(
                "give a Site either a constraint or a transform, not both (the transform sets the support)"
            )
        self.bijection: Bijection = bijection_for(constraint, self.shape, transform)
        self.constraint = self.bijection.constraint
        self.transform = transform
        self.init = None if init is None else self._checked_init(init)

    @property
    def unconstrained_shape(self) -> torch.Size:
        """The shape of this site's block of the unconstrained vector."""
        return self.bijection.unconstrained_shape

    @property
    def size(self) -> int:
        """This site's share of the model's dimension ``D``."""
        return self.bijection.size

    def _checked_init(self, init) -> Tensor:
        value = init if isinstance(init, Tensor) else torch.as_tensor(init, dtype=torch.get_default_dtype())
        if not value.is_floating_point():
            raise TypeError(f"Site init must be a floating-point tensor or number; got dtype {value.dtype}")
        value = value.detach()
        if value.shape != self.shape:
            raise ValueError(f"Site init has shape {tuple(value.shape)}; the site's shape is {tuple(self.shape)}")
        if not bool(torch.as_tensor(self.constraint.check(value)).all()):
            raise ValueError(f"Site init {value.flatten()[:4].tolist()}... is outside the support {self.constraint}")
        u = self.bijection.inverse(value)
        if not bool(torch.isfinite(u).all()):
            raise ValueError(f"Site init lies on the boundary of {self.constraint}; start strictly inside it")
        return value

    def init_unconstrained(self, dtype: torch.dtype, device=None) -> Tensor:
        """``[size]`` the unconstrained starting point: the inverse of ``init``, or zeros."""
        if self.init is None:
            return torch.zeros(self.size, dtype=dtype, device=device)
        return self.bijection.inverse(self.init.to(dtype=dtype, device=device)).reshape(self.size)

    def __repr__(self) -> str:
        support = f"transform={self.transform}" if self.transform is not None else f"constraint={self.constraint}"
        return f"Site(shape={tuple(self.shape)}, {support})"
