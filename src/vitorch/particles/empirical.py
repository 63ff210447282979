"""``Particles``: the empirical distribution of ``n`` points in ``R^D``, as a torch Distribution.

Particle methods (SVGD, coin sampling) return a set of points rather than a density.
``Particles(x)`` with ``x [n, D]`` is the equally weighted empirical measure
``(1/n) sum_i delta_{x_i}``: ``sample`` and ``rsample`` pick particles uniformly at random
(with replacement), ``mean``, ``variance`` and ``covariance_matrix`` are the particles'
own moments, and ``log_prob`` raises, since a sum of point masses has no density.
Measure its quality with `vitorch.diagnostics.ksd` (it needs only the target's score),
or `vitorch.mmd` against reference draws.

References:
    Liu & Wang, *Stein Variational Gradient Descent: A General Purpose Bayesian Inference
    Algorithm* (NeurIPS 2016).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["Particles"]


class Particles(Distribution):
    """The empirical distribution ``(1/n) sum_i delta_{x_i}`` of particles ``x [n, D]``.

    Args:
        particles: ``[n, D]`` floating tensor, ``n >= 1``, all finite.  It is kept as
            given (not copied): ``rsample`` draws carry gradients to it when it
            requires them.
        validate_args: torch's switch; here it only affects ``sample``'s shape checks.

    Attributes:
        particles: the ``[n, D]`` points.
        num_particles: ``n``.

    ``batch_shape`` is ``()`` and ``event_shape`` is ``(D,)``: ``sample((S,))`` gives
    ``[S, D]``, rows drawn uniformly with replacement.

    Raises:
        TypeError: if ``particles`` is not a floating tensor.
        ValueError: if it is not ``[n, D]`` with ``n, D >= 1``, or holds NaN or infinite values.

    Example:
        >>> q = Particles(torch.randn(100, 2))
        >>> q.sample((5,)).shape, q.mean.shape, q.covariance_matrix.shape
        (torch.Size([5, 2]), torch.Size([2]), torch.Size([2, 2]))

    References:
        Liu & Wang, *Stein Variational Gradient Descent* (NeurIPS 2016).
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, particles: Tensor, validate_args: bool | None = None):
        if not isinstance(particles, Tensor) or not particles.is_floating_point():
            got = particles.dtype if isinstance(particles, Tensor) else type(particles).__name__
            raise TypeError(f"Particles: particles must be a floating tensor [n, D]; got {got}")
        if particles.dim() != 2 or particles.shape[0] < 1 or particles.shape[1] < 1:
            raise ValueError(f"Particles: particles must be [n, D] with n, D >= 1; got shape {tuple(particles.shape)}")
        if not bool(torch.isfinite(particles.detach()).all()):
            raise ValueError("Particles: particles hold NaN or infinite values")
        self.particles = particles
        super().__init__(torch.Size(), particles.shape[-1:], validate_args=validate_args)

    @property
    def num_particles(self) -> int:
        """``n``."""
        return self.particles.shape[0]

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """``[*sample_shape, D]`` particles picked uniformly with replacement; gradients reach ``particles``."""
        shape = torch.Size(sample_shape)
        idx = torch.randint(self.num_particles, shape, device=self.particles.device)
        return self.particles[idx]

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """``[*sample_shape, D]`` particles picked uniformly with replacement, detached."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """Not defined: an empirical measure has no density.

        Raises:
            NotImplementedError: always, saying what to use instead.
        """
        raise NotImplementedError(
            "Particles has no log_prob: a sum of point masses has no density. Measure the particles "
            "with vitorch.diagnostics.ksd(particles, log_prob), compare them with reference draws "
            "with vitorch.mmd, or fit a parametric family to them if you need a density"
        )

    def entropy(self) -> Tensor:
        """Not defined (see `log_prob`)."""
        raise NotImplementedError("Particles has no entropy: an empirical measure has no density")

    @property
    def mean(self) -> Tensor:
        """``[D]`` the particles' mean."""
        return self.particles.mean(0)

    @property
    def covariance_matrix(self) -> Tensor:
        """``[D, D]`` the empirical measure's covariance, ``(1/n) sum_i (x_i - m)(x_i - m)^T``.

        The divisor is ``n``, not ``n - 1``: this is the covariance of the distribution
        ``Particles`` *is*, not an estimate from draws of another one.
        """
        centred = self.particles - self.mean
        return centred.mT @ centred / self.num_particles

    @property
    def variance(self) -> Tensor:
        """``[D]`` the diagonal of `covariance_matrix` (divisor ``n``)."""
        return (self.particles - self.mean).pow(2).mean(0)

    @property
    def stddev(self) -> Tensor:
        """``[D]`` the square root of `variance`."""
        return self.variance.sqrt()

    def expect(self, f) -> Tensor:
        """``(1/n) sum_i f(x_i)``: ``f`` maps ``[n, D]`` to ``[n, *shape]``; returns ``[*shape]``.

        Raises:
            ValueError: if ``f`` does not return a tensor with ``n`` leading.
        """
        values = f(self.particles)
        if not isinstance(values, Tensor) or values.dim() < 1 or values.shape[0] != self.num_particles:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"Particles.expect: f must return [n = {self.num_particles}, ...]; got {got}")
        return values.mean(0)

    def expand(self, batch_shape, _instance=None):
        """Only the empty batch shape: an empirical measure has no batch of its own."""
        if torch.Size(batch_shape) != torch.Size():
            raise ValueError(f"Particles cannot be expanded to batch shape {tuple(batch_shape)}; it has batch shape ()")
        return self

    def __repr__(self) -> str:
        return f"Particles(num_particles={self.num_particles}, dim={self.particles.shape[-1]})"
