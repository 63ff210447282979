"""MixFlows: the uniform mixture of a measure-preserving map's iterates (Xu, Chen & Campbell, 2023).

Given a reference ``q0`` and an invertible map ``T``, the MixFlow of length ``N`` is

    ``q_N = (1/N) sum_{n=0}^{N-1} T^n # q0``,

with

* i.i.d. sampling: draw ``n`` uniformly from ``{0, ..., N-1}`` and push a ``q0`` draw through
  ``T^n``;
* the density ``q_N(s) = (1/N) sum_n q0(T^{-n} s) |det dT^{-n}(s)|``, in one backward pass
  ``s, T^{-1} s, ..., T^{-(N-1)} s`` over the orbit;
* an unbiased ELBO estimate ``log pi(s) - log q_N(s)`` at a draw ``s = T^n s0``; its density
  needs ``T^{-j} s`` for ``j <= n``, which are the forward iterates ``T^{n-j} s0`` already
  computed while sampling, and for ``j > n`` the backward iterates ``T^{-(j-n)} s0`` of the
  start.  `MixFlow.rsample_and_log_prob` does exactly that (the paper's estimator), so it
  reads the density from the states it visited rather than from the inverted map.

``T`` is the uncorrected Hamiltonian map of `vitorch.families._hamiltonian_map` (leapfrog,
then a deterministic momentum refreshment and a pseudo-time shift), which acts on the
augmented state ``s = (x, rho, u)``: position ``x [d]``, Laplace momentum ``rho [d]``,
pseudo-time ``u`` uniform on ``[0, 1)``.  The family's event is that state, ``[2d + 1]``, with
reference ``q0(x) m(rho) Unif(u)`` and target ``pi(x) m(rho) Unif(u)``, whose normalizing
constant is ``pi``'s: ``E_q[log pi(x) + log m(rho) - log q_N(s)] <= log Z``.  Use
`MixFlow.log_joint` as the log-joint of `vitorch.loss` and `MixFlow.position` to read
``x``.

Estimators: the draws are a piecewise-smooth function of the parameters (the refreshment
wraps modulo one, and the Laplace kinetic gradient ``sign(rho)`` jumps), so pathwise
gradients (``reparam``, ``stl``, ``dreg``) miss the jumps' contribution and are biased for the
expectation; they are offered (``rsample`` is exact draw by draw) but not recommended.  For
the reference's parameters at a fixed step size the density is smooth in the parameters,
so ``score()`` and ``vimco`` are unbiased.  The paper fits ``q0`` beforehand and picks the step
size by the ELBO estimate (`MixFlow.elbo`) over a grid.

Numerics: the map runs in float64 whatever the parameters' dtype.  It is exactly invertible
in exact arithmetic, but ``log_prob`` inverts it numerically, so (as the paper's sec. 4
discusses) rounding errors can grow along the backward pass where the leapfrog step is too
large for the target's curvature.  One loss is not rounding but range: a momentum above
about 36 (reached in far tails with steep gradients) has a Laplace CDF of exactly one in
float64, and the refreshment cannot be undone there.  `MixFlow.rsample_and_log_prob` reads
the density of its own draws from the visited orbit and is the more robust of the two.

References:
    Xu, Chen & Campbell, MixFlows: principled variational inference via mixed flows (ICML 2023),
    sec. 3 (sampling, density, ELBO) and sec. 5 (uncorrected Hamiltonian MixFlows).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from . import _hamiltonian_map as hm
from .base import Family, as_params, cast_value, check_param, stopped

__all__ = ["MixFlow"]

# The map runs in float64 whatever the parameters' dtype: in float32 the refreshment's CDF
# rounds to 1 for momenta above ~17 (0.5 e^-17 is below half an ulp of 1), so T^{-1}(T(s))
# loses the momentum; on a banana with steep gradients that hit ~0.1% of states per step.
_WORK = torch.float64


class _AugmentedSupport(constraints.Constraint):
    """``(x, rho, u)``: finite position and momentum, pseudo-time in ``[0, 1)``."""

    event_dim = 1

    def __init__(self, dim: int):
        self.dim = dim
        super().__init__()

    def check(self, value):
        d = self.dim
        finite = torch.isfinite(value[..., : 2 * d]).all(-1)
        u = value[..., 2 * d]
        return finite & (u >= 0) & (u < 1)

    def __repr__(self):
        return f"AugmentedState(x, rho finite in R^{self.dim}, u in [0, 1))"


class MixFlow(Family):
    """Uncorrected Hamiltonian MixFlow (Xu, Chen & Campbell, 2023) over ``s = (x, rho, u)``.

    Args:
        log_target: ``x [*, d] -> log pi(x) [*]``, an unnormalized log-density; the map reads
            its gradient (by autograd unless ``grad_log_target`` is given).
        base: the reference ``q0`` of ``x``, a distribution with event shape ``[d]`` and
            ``rsample`` (e.g. a fitted `vitorch.DiagNormal`); its batch shape is the family's.
        num_steps: ``N``, the number of mixed iterates ``T^0, ..., T^{N-1}``.
        step_size: ``[d]`` or ``[*batch, d]`` (or a float) positive leapfrog step sizes.
        num_leapfrog: ``L``, leapfrog steps per application of ``T``.
        shift: ``xi`` in ``(0, 1)``, the pseudo-time increment (irrational; default ``pi/16``).
        grad_log_target: optional ``x [*, d] -> grad log pi(x) [*, d]`` in closed form (faster
            than autograd).  It must match ``log_target``.
        validate_args: check arguments and ``log_prob`` inputs.

    Shapes: ``rsample((K,))`` is ``[K, *batch, 2d + 1]``; ``log_prob`` and ``log_joint`` map
    ``[K, *batch, 2d + 1]`` to ``[K, *batch]``.  Sampling costs up to ``N - 1`` applications of
    ``T`` (``L`` gradients each), ``log_prob`` ``N - 1``, ``rsample_and_log_prob`` up to
    ``2(N - 1)`` (the particles' ``n`` differ; the batch runs to the largest).

    Example:
        >>> log_pi = lambda x: -0.5 * (x**2).sum(-1)
        >>> q = MixFlow(log_pi, vt.DiagNormal(torch.zeros(2), torch.ones(2)), num_steps=50, step_size=0.2)
        >>> s, log_q = q.rsample_and_log_prob((100,))            # [100, 5], [100]
        >>> elbo = (q.log_joint(s) - log_q).mean()               # <= log Z = log(2 pi)
        >>> x = q.position(s)                                    # [100, 2]

    References:
        Xu, Chen & Campbell, MixFlows: principled variational inference via mixed flows
        (ICML 2023), algorithms of sec. 3 and the map of sec. 5.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(
        self,
        log_target: Callable[[Tensor], Tensor],
        base: Distribution,
        num_steps: int,
        step_size,
        num_leapfrog: int = 10,
        shift: float = hm.DEFAULT_SHIFT,
        grad_log_target: Callable[[Tensor], Tensor] | None = None,
        validate_args: bool | None = None,
    ):
        if not callable(log_target):
            raise TypeError(f"MixFlow: log_target must be callable; got {type(log_target).__name__}")
        if not isinstance(base, Distribution) or len(base.event_shape) != 1:
            shape = tuple(getattr(base, "event_shape", ())) if isinstance(base, Distribution) else None
            raise ValueError(
                f"MixFlow: base must be a Distribution with event shape [d]; got {type(base).__name__} {shape}"
            )
        if not getattr(base, "has_rsample", False):
            raise ValueError(f"MixFlow: base {type(base).__name__} has no rsample")
        for name, v in (("num_steps", num_steps), ("num_leapfrog", num_leapfrog)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MixFlow: {name} must be an integer >= 1; got {v!r}")
        if not (0 < float(shift) < 1):
            raise ValueError(f"MixFlow: shift must lie in (0, 1); got {shift!r}")
        d = base.event_shape[0]
        (step_size,) = as_params("MixFlow", step_size=step_size)
        validate = Distribution._validate_args if validate_args is None else validate_args
        if validate:
            ok = (step_size > 0) & torch.isfinite(step_size)
            check_param("step_size", step_size, "PositiveFinite(x > 0 and finite)", ok, "MixFlow")
        if step_size.dim() > 0 and step_size.shape[-1] not in (1, d):
            raise ValueError(f"MixFlow: step_size {tuple(step_size.shape)} must end in 1 or d={d}")
        try:
            batch = torch.broadcast_shapes(base.batch_shape, step_size.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"MixFlow: step_size {tuple(step_size.shape)} does not broadcast with the base's batch shape "
                f"{tuple(base.batch_shape)}"
            ) from None
        self.log_target, self.base, self.step_size = log_target, base, step_size
        self.num_steps, self.num_leapfrog, self.shift = num_steps, num_leapfrog, float(shift)
        self.grad_log_target, self.dim = grad_log_target, d
        super()._init_checked(batch, torch.Size([2 * d + 1]), False)
        self._validate_args = bool(validate)

    @property
    def support(self):
        return _AugmentedSupport(self.dim)

    # ---- pieces ---------------------------------------------------------------------------
    def position(self, s: Tensor) -> Tensor:
        """``x [*, d]`` of augmented states ``s [*, 2d + 1]``."""
        return s[..., : self.dim]

    def log_joint(self, s: Tensor) -> Tensor:
        """Augmented unnormalized target ``log pi(x) + log m(rho)`` (``u`` is uniform): ``[*]``."""
        return self.log_target(s[..., : self.dim]) + hm.laplace_log_density(s[..., self.dim : 2 * self.dim])

    def _grad(self, x: Tensor) -> Tensor:
        if self.grad_log_target is not None:
            return self.grad_log_target(x)
        if torch.is_grad_enabled() and x.requires_grad:  # keep the path from x (pathwise, STL)
            (g,) = torch.autograd.grad(self.log_target(x).sum(), x, create_graph=True)
            return g
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_target(xi).sum(), xi)
        return g

    def _eps(self) -> Tensor:
        return self.step_size.to(_WORK)

    def _base(self) -> Distribution:
        return self.base if self.base.batch_shape == self.batch_shape else self.base.expand(self.batch_shape)

    def _log_q0(self, x: Tensor, rho: Tensor) -> Tensor:
        return self._base().log_prob(x).to(_WORK) + hm.laplace_log_density(rho)

    def _split(self, s: Tensor):
        d = self.dim
        return s[..., :d], s[..., d : 2 * d], s[..., 2 * d]

    def _start(self, sample_shape) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A reference draw ``(x0, rho0, u0)`` and each particle's ``n``."""
        x = self._base().rsample(sample_shape).to(_WORK)
        shape = x.shape
        e = torch.empty(shape, dtype=x.dtype, device=x.device).exponential_()
        sign = torch.randint(0, 2, shape, device=x.device).to(x.dtype) * 2 - 1
        rho = sign * e  # standard Laplace
        u = torch.rand(shape[:-1], dtype=x.dtype, device=x.device)
        n = torch.randint(0, self.num_steps, shape[:-1], device=x.device)
        return x, rho, u, n

    def _step(self, x, rho, u, g, direction: int):
        f = hm.forward if direction > 0 else hm.inverse
        return f(x, rho, u, g, self._eps(), self.num_leapfrog, self._grad, self.shift)

    # ---- sampling and density -------------------------------------------------------------
    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """``[*sample, *batch, 2d + 1]``: ``T^n`` of a reference draw, ``n`` uniform per particle."""
        x, rho, u, n = self._start(torch.Size(sample_shape))
        g = self._grad(x)
        for t in range(int(n.max()) if n.numel() else 0):
            x1, rho1, u1, g1, _ = self._step(x, rho, u, g, +1)
            move = t < n
            m = move.unsqueeze(-1)
            x, rho, g = torch.where(m, x1, x), torch.where(m, rho1, rho), torch.where(m, g1, g)
            u = torch.where(move, u1, u)
        return torch.cat([x, rho, u.unsqueeze(-1)], -1).to(self.step_size.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q_N(s) = log (1/N) sum_n q0(T^{-n} s) |det dT^{-n}(s)|`` in one backward pass: ``[*]``."""
        if self._validate_args:
            self._validate_sample(value)
        dtype = self.step_size.dtype
        value = cast_value(value, _WORK)
        try:
            torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"MixFlow.log_prob: value {tuple(value.shape)} does not broadcast with batch shape "
                f"{tuple(self.batch_shape)} and event shape {tuple(self.event_shape)}"
            ) from None
        x, rho, u = self._split(value)
        g = self._grad(x)
        acc = self._log_q0(x, rho)
        log_det = torch.zeros_like(acc)
        for _ in range(self.num_steps - 1):
            x, rho, u, g, ladj = self._step(x, rho, u, g, -1)
            log_det = log_det + ladj
            acc = torch.logaddexp(acc, self._log_q0(x, rho) + log_det)
        return (acc - math.log(self.num_steps)).to(dtype)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """Draw ``s = T^n s0`` and ``log q_N(s)`` from the orbit of ``s0`` (the paper's ELBO estimator).

        With ``C_t`` the summed ``log|det dT|`` from ``s0`` to ``s_t = T^t s0`` (negative ``t``:
        minus the sum back to ``s_t``), ``log q_N(s_n) = logsumexp_{t=n-N+1..n}(log q0(s_t) + C_t)
        - C_n - log N``.  Shapes as `rsample` and `log_prob`.
        """
        x0, rho0, u0, n = self._start(torch.Size(sample_shape))
        g0 = self._grad(x0)
        big = self.num_steps - 1
        terms = {0: self._log_q0(x0, rho0)}
        x, rho, u, g, c = x0, rho0, u0, g0, torch.zeros_like(terms[0])
        sx, srho, su, sc = x0, rho0, u0, c
        for t in range(1, int(n.max()) + 1 if n.numel() else 1):
            x, rho, u, g, ladj = self._step(x, rho, u, g, +1)
            c = c + ladj
            terms[t] = self._log_q0(x, rho) + c
            hit = n == t
            sx, srho = torch.where(hit.unsqueeze(-1), x, sx), torch.where(hit.unsqueeze(-1), rho, srho)
            su, sc = torch.where(hit, u, su), torch.where(hit, c, sc)
        x, rho, u, g, c = x0, rho0, u0, g0, torch.zeros_like(terms[0])
        for t in range(1, int((big - n).max()) + 1 if n.numel() else 1):
            x, rho, u, g, ladj = self._step(x, rho, u, g, -1)
            c = c + ladj
            terms[-t] = self._log_q0(x, rho) + c
        order = sorted(terms)
        stacked = torch.stack([terms[t] for t in order])  # [T, *sample, *batch]
        times = torch.tensor(order, device=n.device).reshape(-1, *([1] * n.dim()))
        inside = (times <= n) & (times >= n - big)
        log_q = torch.where(inside, stacked, -math.inf).logsumexp(0) - sc - math.log(self.num_steps)
        dtype = self.step_size.dtype
        return torch.cat([sx, srho, su.unsqueeze(-1)], -1).to(dtype), log_q.to(dtype)

    @torch.no_grad()
    def elbo(self, num_draws: int) -> Tensor:
        """Unbiased ELBO estimates ``log pi(x) + log m(rho) - log q_N(s)``, one per draw: ``[num_draws, *batch]``.

        Their mean estimates ``E_q[log pi] + H(q_N)`` (with the momentum's terms), a lower bound
        on ``log Z``; their standard deviation over ``sqrt(num_draws)`` is its standard error.
        """
        s, log_q = self.rsample_and_log_prob((int(num_draws),))
        return self.log_joint(s) - log_q

    # ---- torch plumbing -------------------------------------------------------------------
    def _rebuild(self, base: Distribution, step_size: Tensor) -> MixFlow:
        new = MixFlow(
            self.log_target,
            base,
            self.num_steps,
            step_size,
            self.num_leapfrog,
            self.shift,
            self.grad_log_target,
            validate_args=False,
        )
        new._validate_args = self._validate_args
        return new

    def detach(self) -> MixFlow:
        return self._rebuild(stopped(self.base), self.step_size.detach())

    def expand(self, batch_shape, _instance=None) -> MixFlow:
        batch_shape = torch.Size(batch_shape)
        return self._rebuild(self.base.expand(batch_shape), self.step_size)

    def __repr__(self) -> str:
        return (
            f"MixFlow(d={self.dim}, num_steps={self.num_steps}, num_leapfrog={self.num_leapfrog}, "
            f"batch_shape={tuple(self.batch_shape)})"
        )
