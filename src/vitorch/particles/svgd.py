"""Stein variational gradient descent: ``n`` interacting particles pushed towards a target.

``SVGD(log_prob, x0, lr)`` keeps particles ``x [n, D]`` and, at every ``step()``, asks the
target for ``log p`` at all of them at once (``log_prob: [n, D] -> [n]``), takes the score
by autograd, forms the Stein direction ``phi`` (`vitorch.particles.kernel.svgd_direction`)
and hands ``-phi`` as the gradient to a torch optimizer (plain gradient ascent
``x <- x + lr phi`` by default; Liu & Wang ran AdaGrad-type steps).  ``run(steps)``
returns the particles as a `vitorch.particles.Particles` distribution.

The target is called once per step and may be stochastic: a minibatch estimate of
``log p`` (scaled to the full data) gives a stochastic Stein direction, as in Liu &
Wang's experiments.  ``model.log_density`` of a `vitorch.model.Model` is such a target.

References:
    Liu & Wang, *Stein Variational Gradient Descent: A General Purpose Bayesian Inference
    Algorithm* (NeurIPS 2016).
    Wang, Tang, Bajaj & Liu, *Stein Variational Gradient Descent with Matrix-Valued Kernels*
    (NeurIPS 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .empirical import Particles
from .kernel import Metric, svgd_direction

__all__ = ["SVGD", "ParticleMethod"]

Preconditioner = Tensor | Callable[[Tensor], Tensor] | None


class ParticleMethod:
    """What SVGD and coin sampling share: the particles, the target's score, the Stein direction.

    Args:
        log_prob: ``x [n, D] -> [n]``, the target's log-density up to a constant (possibly a
            stochastic minibatch estimate); extra arguments of `step` are passed on to it.
        particles: ``[n, D]`` starting particles (a tensor or a `Particles`); copied.
        bandwidth: the RBF kernel's ``h`` in ``exp(-|x - y|^2 / h)``; ``None`` (default) for
            the median heuristic, recomputed at every step.
        preconditioner: ``None``; a fixed ``Q`` (``[D]`` positive diagonal or ``[D, D]``
            positive definite); or a callable ``x [n, D] -> Q`` called at every step (e.g.
            `vitorch.particles.mean_hessian`).  The direction becomes the matrix-kernel
            direction of Wang et al. (2019) with ``K = Q^{-1} k_Q``.

    Attributes:
        x: ``[n, D]`` the current particles (a plain tensor, updated in place).
        num_steps: steps taken so far.
        bandwidth_used: the ``h`` of the last step (0-d), or ``None`` before the first.

    Raises:
        TypeError: if ``log_prob`` is not callable or ``particles`` not a floating tensor.
        ValueError: if ``particles`` is not ``[n, D]``, holds non-finite values, or has
            ``n > 1`` identical rows (their repulsion is zero: they would move as one); if
            ``bandwidth`` is not positive and finite.
    """

    def __init__(self, log_prob: Callable[..., Tensor], particles, bandwidth=None, preconditioner=None):
        name = type(self).__name__
        if not callable(log_prob):
            raise TypeError(f"{name}: log_prob must be callable [n, D] -> [n]; got {type(log_prob).__name__}")
        x = particles.particles if isinstance(particles, Particles) else particles
        x = Particles(x).particles.detach().clone()  # validates shape, dtype and finiteness
        if x.shape[0] > 1 and bool((x == x[:1]).all()):
            raise ValueError(
                f"{name}: all {x.shape[0]} starting particles are identical; identical particles exert no "
                "repulsion on each other and would move as one. Start from a spread, e.g. x0 + 0.1 * randn"
            )
        if bandwidth is not None:
            if isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or not math.isfinite(bandwidth):
                raise ValueError(f"{name}: bandwidth must be a positive finite number or None; got {bandwidth!r}")
            if bandwidth <= 0:
                raise ValueError(f"{name}: bandwidth must be positive; got {bandwidth!r}")
        if preconditioner is not None and not isinstance(preconditioner, Tensor) and not callable(preconditioner):
            raise TypeError(
                f"{name}: preconditioner must be None, a tensor Q ([D] or [D, D]) or a callable x -> Q; "
                f"got {type(preconditioner).__name__}"
            )
        self.log_prob = log_prob
        self.x = x
        self.bandwidth = bandwidth
        self.num_steps = 0
        self.bandwidth_used: Tensor | None = None
        self._metric = Metric(preconditioner, x.shape[1]) if isinstance(preconditioner, Tensor) else None
        self._preconditioner = preconditioner

    @property
    def particles(self) -> Particles:
        """The current particles as a `Particles` distribution (a copy)."""
        return Particles(self.x.clone())

    def score(self, x: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """``(log p(x) [n], grad log p(x) [n, D])``, both detached, by one call of ``log_prob``.

        Raises:
            TypeError: if ``log_prob`` returns no tensor.
            ValueError: if it returns the wrong shape, or a non-finite value or score
                (naming the step and how many particles).
        """
        name = type(self).__name__
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            lp = self.log_prob(xr, *args, **kwargs)
            if not isinstance(lp, Tensor):
                raise TypeError(f"{name}: log_prob must return a tensor [n]; got {type(lp).__name__}")
            if lp.shape != x.shape[:1]:
                raise ValueError(
                    f"{name}: log_prob must map particles [n, D] = {tuple(x.shape)} to [n] = [{x.shape[0]}] "
                    f"(one value per particle); got shape {tuple(lp.shape)}"
                )
            if not lp.requires_grad:
                raise ValueError(f"{name}: log_prob's value does not depend on the particles (no gradient)")
            (s,) = torch.autograd.grad(lp.sum(), xr)
        bad = ~(torch.isfinite(lp) & torch.isfinite(s).all(-1))
        if bool(bad.any()):
            raise ValueError(
                f"{name}: log_prob or its gradient is not finite at {int(bad.sum())} of {x.shape[0]} particles "
                f"at step {self.num_steps}; the particles left the region where the target is finite "
                "(lower the learning rate, or start closer to the target's mass)"
            )
        return lp.detach(), s.detach()

    def direction(self, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """``(phi [n, D], log p [n])``: the (preconditioned) Stein direction at the current particles."""
        x = self.x
        lp, s = self.score(x, *args, **kwargs)
        metric = self._metric
        if metric is None and self._preconditioner is not None:
            metric = Metric(self._preconditioner(x), x.shape[1])
        if metric is None:
            phi, self.bandwidth_used = svgd_direction(x, s, self.bandwidth)
        else:
            phi_y, self.bandwidth_used = svgd_direction(metric.to_y(x), metric.score_to_y(s), self.bandwidth)
            phi = metric.back(phi_y)
        return phi, lp

    def step(self, *args, **kwargs) -> Tensor:  # pragma: no cover - each method defines its own
        raise NotImplementedError

    def run(self, steps: int, callback: Callable[[int, ParticleMethod], None] | None = None) -> Particles:
        """Take ``steps`` steps; ``callback(t, self)`` after each.  Returns the `particles`.

        Raises:
            ValueError: if ``steps`` is not a non-negative integer.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{type(self).__name__}.run: steps must be an integer >= 0; got {steps!r}")
        for t in range(steps):
            self.step()
            if callback is not None:
                callback(t, self)
        return self.particles


class SVGD(ParticleMethod):
    """Stein variational gradient descent with an RBF kernel and a learning rate.

    Each `step` moves the particles by ``lr * phi(x)`` (with the default optimizer), where
    ``phi`` is the Stein direction of Liu & Wang (2016), eq. 8.  With one particle the
    repulsion vanishes and ``phi = grad log p``: SVGD is then gradient ascent to the mode.

    Args:
        log_prob: ``x [n, D] -> [n]``, the target's log-density up to a constant.
        particles: ``[n, D]`` starting particles (tensor or `Particles`).
        lr: the learning rate, required: its scale depends on the target's (for no learning
            rate, use `vitorch.particles.CoinSVGD`).
        optimizer: ``None`` (default) for plain steps ``x <- x + lr * phi``, or a torch
            optimizer class (or factory ``(params, lr=...) -> Optimizer``) that receives
            ``-phi`` as the gradient; ``torch.optim.Adagrad`` or ``RMSprop`` give the adaptive
            steps of Liu & Wang's code.
        bandwidth, preconditioner: see `ParticleMethod`.

    Raises:
        ValueError: if ``lr`` is not positive and finite, and as `ParticleMethod`.

    Example:
        >>> target = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> svgd = SVGD(target.log_prob, torch.randn(50, 2) + 3.0, lr=0.1)
        >>> q = svgd.run(500)              # a Particles distribution
        >>> q.mean, q.covariance_matrix    # near 0 and the identity

    References:
        Liu & Wang, *Stein Variational Gradient Descent* (NeurIPS 2016), Algorithm 1.
    """

    def __init__(
        self,
        log_prob: Callable[..., Tensor],
        particles,
        lr: float,
        *,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        bandwidth: float | None = None,
        preconditioner: Preconditioner = None,
    ):
        super().__init__(log_prob, particles, bandwidth, preconditioner)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"SVGD: lr must be a positive finite number; got {lr!r}")
        self.lr = float(lr)
        self.optimizer = None if optimizer is None else optimizer([self.x], lr=self.lr)

    def step(self, *args, **kwargs) -> Tensor:
        """One SVGD step; extra arguments go to ``log_prob`` (e.g. a minibatch).

        Returns:
            0-d the particles' mean ``log p`` before the move (detached), to monitor.
        """
        phi, lp = self.direction(*args, **kwargs)
        if self.optimizer is None:
            self.x.add_(phi, alpha=self.lr)
        else:
            self.x.grad = -phi  # the optimizers descend; SVGD ascends along phi
            self.optimizer.step()
            self.x.grad = None
        self.num_steps += 1
        return lp.mean()
