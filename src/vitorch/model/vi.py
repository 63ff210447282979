"""``VI``: a model and its guide as one module whose forward is the variational loss, for ``vt.fit``.

``vt.fit(VI(model, guide), None, steps=2000)`` trains a global posterior: with
``data=None`` fit runs ``steps`` steps, each calling ``forward(None)``, which returns
``vt.loss(model.log_density, guide(), K, objective, estimator)``.  The progress bar,
checkpoints, resumption and the NaN guard are fit's.

Threads: torch runs each operation on all cores by default.  A small model (a few
hundred unconstrained dimensions or fewer) gains nothing from that, and on a machine
whose cores are busy with other work a fit with two threads can run many times slower
than with one; pass ``threads=1`` to `VI.fit` (or call
``torch.set_num_threads(1)`` yourself).  Nothing here changes the setting unasked.

References:
    Kucukelbir, Tran, Ranganath, Gelman & Blei, *Automatic Differentiation Variational
    Inference* (JMLR 2017).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._output import LossOutput
from ..estimators import Estimator, reparam
from ..families.flow import Flow
from ..loss import check, loss
from ..objectives import elbo
from ..training import History, fit
from .fused import FusedStep
from .model import Model

__all__ = ["VI"]


@contextlib.contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class VI(nn.Module):
    """Variational inference for a `vitorch.model.Model` with a guide, as an ``nn.Module``.

    Args:
        model: the model (its parameters, if ``log_joint`` is a module, train too).
        guide: an `vitorch.model.AutoGuide` or any module whose call returns a
            family on ``R^D``.
        num_particles: ``K``.
        objective: a `vitorch.objectives` bound (default the ELBO).
        estimator: a `vitorch.estimators` estimator (default ``reparam``; ``stl``
            and ``dreg`` work with every auto guide).

    ``forward(batch=None)`` returns the `vitorch.LossOutput` of
    `vitorch.loss` (``bound`` has shape ``[]`` for a global posterior).  The
    set-up is checked once, at construction.

    Raises:
        TypeError: if ``model`` is not a Model or ``guide`` not a module.
        ValueError: from `vitorch.check`, listing why the objective, estimator,
            family and ``K`` cannot work together; or if the guide's event shape is not ``[D]``.

    Example:
        >>> vi = VI(model, AutoGuide(model, "full"), num_particles=8, estimator=vt.estimators.stl)
        >>> history = vi.fit(steps=2000)

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017);
        Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017).
    """

    def __init__(
        self, model: Model, guide: nn.Module, num_particles: int = 1, objective=elbo, estimator: Estimator = reparam
    ):
        super().__init__()
        if not isinstance(model, Model):
            raise TypeError(f"VI: model must be a vitorch Model; got {type(model).__name__}")
        if not isinstance(guide, nn.Module):
            raise TypeError(f"VI: guide must be an nn.Module returning a family; got {type(guide).__name__}")
        q = guide()
        if tuple(q.event_shape) != (model.dim,):
            raise ValueError(f"VI: the guide's event shape {tuple(q.event_shape)} is not [D] = [{model.dim}]")
        self.num_particles = check(q, num_particles, objective, estimator)
        self.model, self.guide = model, guide
        self.objective, self.estimator = objective, estimator

    @property
    def default_lr(self) -> float:
        """The guide's ``default_lr`` (0.02 if it has none)."""
        return getattr(self.guide, "default_lr", None) or 0.02

    def forward(self, batch=None) -> LossOutput:
        """One Monte Carlo estimate of the bound; ``batch`` is ignored (a global posterior)."""
        return loss(self.model.log_density, self.guide(), self.num_particles, self.objective, self.estimator)

    def fit(self, steps: int, *, lr: float | None = None, threads: int | None = None, **options) -> History:
        """``vt.fit(self, None, steps=steps, lr=lr or self.default_lr, **options)``.

        Args:
            steps: optimizer steps.
            lr: Adam's learning rate (default `default_lr`).
            threads: run the fit with this many torch threads and restore the old
                setting afterwards (``None``: leave it alone).
            **options: any other `vitorch.fit` option (``scheduler``,
                ``checkpoint_dir``, ``progress``, ``seed``...).

        Returns:
            fit's `vitorch.History` (one record per step, with the bound).
        """
        with _threads(threads):
            return fit(self, None, steps=steps, lr=lr or self.default_lr, **options)

    def fused_step(self, lr: float | None = None, **options) -> FusedStep:
        """A `vitorch.model.FusedStep`: one whole Adam step (draw, density, gradient, update) as one compiled call.

        ``step = vi.fused_step(); for _ in range(2000): step()``.  The first call
        compiles (seconds); later ones cost little more than the arithmetic, which on
        small models is several times cheaper than `vitorch.training.compile_step`'s
        compiled forward with an autograd backward.  It has none of `vitorch.fit`'s
        checks: read the returned loss now and then to catch a non-finite fit.

        Args:
            lr: Adam's learning rate (default `default_lr`).
            **options: ``betas``, ``eps``, ``backend`` of `vitorch.model.FusedStep`.

        Raises:
            ValueError: for a flow guide with an estimator that reads ``log q`` at stopped
                parameters (``stl``, ``dreg``; use `fit` for that pair).
        """
        if getattr(self.estimator, "stop_q", False) and isinstance(self.guide(), Flow):
            raise ValueError(
                f"VI.fused_step: a flow guide with {self.estimator.name} does not compile (its density at "
                "stopped parameters swaps the flow's parameters inside the traced gradient); train it "
                "eagerly with VI.fit, or use the reparam estimator"
            )
        return FusedStep(self, lr or self.default_lr, **options)
