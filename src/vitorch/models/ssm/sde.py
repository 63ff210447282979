"""Discretized SDEs with parameter inference: Euler–Maruyama model and Ryder et al.'s variational bridge.

Model.  ``dx = alpha(x, theta) dt + beta(x, theta)^{1/2} dW`` on a grid of step
``dt`` from a known ``x_0``; the Euler–Maruyama transition is
``x_{k+1} ~ N(x_k + alpha(x_k, theta) dt, beta(x_k, theta) dt)``.  The parameters
live on an unconstrained scale ``u`` with ``theta = transform(u)`` and a prior on
``u``; observations ``y_j ~ N(H x_{k_j}, obs_scale^2 I)`` arrive at grid indices ``k_j``.

Posterior.  ``q(u, x_{1:K}) = q(u) q(x_{1:K} | u, y)`` with ``q(u)`` a full-rank
Gaussian and ``q(x | u, y)`` an affine autoregressive flow over the whole path
(Ryder et al., 2018): every step is Gaussian with mean and Cholesky factor from a
network that sees the previous state, the time, the time left to the next
observation, that observation's gap ``y_next - H x_prev``, and ``u``.  We let the
network *correct* a modified diffusion bridge (Durham & Gallant, 2002) towards
the next observation, ``loc = x + ((y_next - x) / tau + d_alpha) dt`` and
``scale = (beta dt (tau - dt/2) / tau)^{1/2} S`` with ``S`` lower-triangular (after
the last observation, the model's own Euler step instead), so an untrained guide
already heads for the data — a choice of ours that makes training far shorter; the
family is Ryder et al.'s either way.  The bridge needs ``obs_matrix = I``; with
another ``H`` the base is the Euler step.  The latent (what `SSMVI` draws from the guide) is
``z = [u, vec(x_{1:K})]``, event ``[P + K D]``; `EulerMaruyamaSDE.split`
takes it apart.

References:
    Ryder, Golightly, McGough & Prangle, Black-Box Variational Inference for
    Stochastic Differential Equations (ICML 2018).
    Durham & Gallant, Numerical Techniques for Maximum Likelihood Estimation of
    Continuous-Time Diffusion Processes (2002) (the modified diffusion bridge).
    Ryder, Prangle, Golightly & Matthews, The Neural Moving Average Model for Scalable
    Variational Inference of State Space Models (UAI 2021; arXiv 2019 as "Black-box
    autoregressive density estimation for state-space models").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torch.nn import functional as F

from ...families.base import Family
from ...families.gaussian import FullRankNormal
from ._protocol import one_series
from .path import AutoregressiveGaussianPath

__all__ = ["EulerMaruyamaSDE", "BridgeStep", "SDEPosterior", "SDEJointPosterior"]

_LOG_2PI = math.log(2 * math.pi)


def _safe_cholesky(cov: Tensor) -> Tensor:
    """Cholesky factor of a diffusion covariance, with a clear error where it is not positive definite."""
    L, info = torch.linalg.cholesky_ex(cov)
    if not bool((info == 0).all()):
        raise ValueError("EulerMaruyamaSDE: diffusion(x, theta) is not positive definite at some state")
    return L


class EulerMaruyamaSDE(nn.Module):
    """Euler–Maruyama discretization of an SDE with unknown parameters and sparse Gaussian observations.

    Args:
        drift: ``alpha(x [..., D], theta [..., P]) -> [..., D]``.
        diffusion: ``beta(x, theta) -> [..., D, D]`` covariance rate (positive definite).
        x0: ``[D]`` known initial state.
        dt: grid step.
        num_steps: ``K``, the number of latent states ``x_1..x_K`` after ``x_0``.
        obs_index: grid indices ``k_j`` in ``1..K`` of the observations.
        obs_scale: standard deviation of the observation noise.
        theta_prior: distribution over ``u`` (event ``[P]``).
        transform: ``u -> theta`` (default ``exp``: positive rates).
        obs_matrix: ``[p, D]`` ``H`` (default identity).

    References:
        Kloeden & Platen, *Numerical Solution of Stochastic Differential Equations* (Springer, 1992):
        the Euler–Maruyama scheme.
        Ryder, Golightly, McGough & Prangle, *Black-Box Variational Inference for Stochastic
        Differential Equations* (ICML 2018).
    """

    def __init__(
        self,
        drift: Callable[[Tensor, Tensor], Tensor],
        diffusion: Callable[[Tensor, Tensor], Tensor],
        x0: Tensor,
        dt: float,
        num_steps: int,
        obs_index: Sequence[int],
        obs_scale: float,
        theta_prior: Distribution,
        transform: Callable[[Tensor], Tensor] = torch.exp,
        obs_matrix: Tensor | None = None,
    ):
        super().__init__()
        if not dt > 0 or num_steps < 1 or not obs_scale > 0:
            raise ValueError(
                f"EulerMaruyamaSDE: need dt > 0, num_steps >= 1, obs_scale > 0; got {dt}, {num_steps}, {obs_scale}"
            )
        idx = torch.as_tensor(list(obs_index), dtype=torch.long)
        if idx.numel() == 0 or int(idx.min()) < 1 or int(idx.max()) > num_steps or bool((idx.diff() <= 0).any()):
            raise ValueError(
                f"EulerMaruyamaSDE: obs_index must be increasing grid indices in 1..{num_steps}; got {idx.tolist()}"
            )
        self.drift, self.diffusion, self.transform, self.theta_prior = drift, diffusion, transform, theta_prior
        D = x0.shape[-1]
        self.register_buffer("x0", x0)
        self.register_buffer("obs_index", idx)
        self.register_buffer("obs_matrix", torch.eye(D, dtype=x0.dtype) if obs_matrix is None else obs_matrix)
        self.dt, self.num_steps, self.obs_scale = dt, num_steps, obs_scale
        self.state_dim, self.num_params = D, theta_prior.event_shape[0]

    @property
    def event_size(self) -> int:
        return self.num_params + self.num_steps * self.state_dim

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [..., P + K D] -> (u [..., P], x [..., K, D])``."""
        if z.shape[-1] != self.event_size:
            raise ValueError(f"EulerMaruyamaSDE.split: z must end in {self.event_size}; got {tuple(z.shape)}")
        P = self.num_params
        return z[..., :P], z[..., P:].reshape(*z.shape[:-1], self.num_steps, self.state_dim)

    def step_law(self, x_prev: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Euler mean ``[..., D]`` and Cholesky factor ``[..., D, D]`` of ``x_{k+1} | x_k``."""
        return x_prev + self.drift(x_prev, theta) * self.dt, _safe_cholesky(self.diffusion(x_prev, theta) * self.dt)

    def log_joint(self, z: Tensor, y: Tensor) -> Tensor:
        """``log p(u, x_{1:K}, y)`` for ``z [*S, P + K D]`` and ``y [J, p]`` (or ``[*B, J, p]``
        against ``z [*S, *B, P + K D]``) -> ``[*S]`` (``[*S, *B]``)."""
        if y.shape[-2] != self.obs_index.numel():
            raise ValueError(
                f"EulerMaruyamaSDE.log_joint: y has {y.shape[-2]} rows but there are {self.obs_index.numel()} obs times"
            )
        u, x = self.split(z)
        theta = self.transform(u).unsqueeze(-2)  # broadcast over steps
        x_prev = torch.cat([self.x0.expand(*x.shape[:-2], 1, self.state_dim), x[..., :-1, :]], -2)
        loc, tril = self.step_law(x_prev, theta)
        e = torch.linalg.solve_triangular(tril, (x - loc).unsqueeze(-1), upper=False).squeeze(-1)
        log_path = (-0.5 * e.pow(2).sum(-1) - tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)).sum(-1)
        log_path = log_path - 0.5 * self.num_steps * self.state_dim * _LOG_2PI
        x_obs = x[..., self.obs_index - 1, :] @ self.obs_matrix.mT
        log_obs = torch.distributions.Normal(x_obs, self.obs_scale).log_prob(y).sum((-1, -2))
        return self.theta_prior.log_prob(u) + log_path + log_obs

    @torch.no_grad()
    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Simulate a path ``x [K, D]`` and observations ``y [J, p]`` at the given ``theta [P]``."""
        x, xs = self.x0, []
        for _ in range(self.num_steps):
            loc, tril = self.step_law(x, theta)
            x = loc + tril @ torch.randn(self.state_dim, generator=generator, dtype=x.dtype)
            xs.append(x)
        x = torch.stack(xs)
        y = x[self.obs_index - 1] @ self.obs_matrix.mT
        return x, y + self.obs_scale * torch.randn(y.shape, generator=generator, dtype=y.dtype)


class BridgeStep(nn.Module):
    """The guide's step: ``(x_prev [..., D], context [..., C]) -> (loc, scale_tril)`` correcting the Euler step.

    ``context = [t / t_end, tau / tau_max, tau, has_next, y_next, u]`` with ``tau`` the time left
    to the next observation; the network also sees ``x_prev`` and the gap ``y_next - H x_prev``,
    both divided by ``state_scale``.

    References:
        Ryder, Golightly, McGough & Prangle, *Black-Box Variational Inference for Stochastic
        Differential Equations* (ICML 2018).
    """

    def __init__(self, sde: EulerMaruyamaSDE, hidden: Sequence[int] = (64, 64), state_scale: float | Tensor = 1.0):
        super().__init__()
        self.sde = sde
        D, p, P = sde.state_dim, sde.obs_matrix.shape[0], sde.num_params
        self.register_buffer("state_scale", torch.as_tensor(state_scale, dtype=sde.x0.dtype))
        layers, width = [], D + 3 + 2 * p + P
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        out = nn.Linear(width, D + D + D * (D - 1) // 2)
        nn.init.zeros_(out.weight)  # start exactly at the prior's Euler step
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)
        eye = torch.eye(D, dtype=sde.obs_matrix.dtype)
        self.bridge = sde.obs_matrix.shape == (D, D) and bool(torch.equal(sde.obs_matrix, eye))
        rows, cols = torch.tril_indices(D, D, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x_prev: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        sde, D = self.sde, self.sde.state_dim
        p = sde.obs_matrix.shape[0]
        times, tau, has_next = context[..., :2], context[..., 2:3], context[..., 3:4]
        y_next, u = context[..., 4 : 4 + p], context[..., 4 + p :]
        gap = y_next - x_prev @ sde.obs_matrix.mT
        feats = torch.cat(
            [x_prev / self.state_scale, times, has_next, y_next / self.state_scale, gap / self.state_scale, u], -1
        )
        out = self.net(feats)
        d_drift, raw_diag, off = out[..., :D], out[..., D : 2 * D], out[..., 2 * D :]
        loc, tril = sde.step_law(x_prev, sde.transform(u))
        if self.bridge:
            # Modified diffusion bridge towards y_next; the Euler step where no observation follows.
            bridge = has_next > 0
            safe_tau = torch.where(bridge, tau, torch.ones_like(tau))
            loc = torch.where(bridge, x_prev + gap * (sde.dt / safe_tau), loc)
            shrink = torch.where(
                bridge, ((safe_tau - 0.5 * sde.dt) / safe_tau).clamp_min(0).sqrt(), torch.ones_like(tau)
            )
            tril = tril * shrink.unsqueeze(-1)
        S = out.new_zeros(*out.shape[:-1], D, D)
        S[..., self.rows, self.cols] = off
        # softplus(x + log(e - 1)) is 1 at x = 0, so the zero-initialized net leaves the prior's step.
        S = S + torch.diag_embed(F.softplus(raw_diag + math.log(math.e - 1)) + 1e-4)
        return loc + d_drift * self.state_scale * sde.dt, tril @ S


class SDEJointPosterior(Family):
    """``q(u) q(x_{1:K} | u, y)`` as one family over ``z = [u, vec(x)]``, event ``[P + K D]``.

    Shapes: ``z [*sample, *batch, P + K * D]`` (batch that of ``q(u)``) and ``log_prob(z) [*sample, *batch]``;
    the first ``P`` entries of ``z`` are the unconstrained parameters ``u``, the rest ``x [K, D]`` flattened.

    References:
        Ryder, Golightly, McGough & Prangle, *Black-Box Variational Inference for Stochastic
        Differential Equations* (ICML 2018).
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self, theta_q: FullRankNormal, step: BridgeStep, static_context: Tensor, x0: Tensor, frozen: bool = False
    ):
        self.theta_q, self.step, self.static_context, self.x0, self.frozen = theta_q, step, static_context, x0, frozen
        K, D = static_context.shape[-2], x0.shape[-1]
        super().__init__(theta_q.batch_shape, torch.Size((theta_q.event_shape[0] + K * D,)), validate_args=False)

    def detach(self) -> SDEJointPosterior:
        return SDEJointPosterior(self.theta_q.detach(), self.step, self.static_context, self.x0, frozen=True)

    def _path(self, u: Tensor) -> AutoregressiveGaussianPath:
        K = self.static_context.shape[-2]
        ctx = torch.cat(
            [self.static_context.expand(*u.shape[:-1], -1, -1), u.unsqueeze(-2).expand(*u.shape[:-1], K, -1)], -1
        )
        path = AutoregressiveGaussianPath(self.step, ctx, self.x0)
        return path.detach() if self.frozen else path

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        u, log_qu = self.theta_q.rsample_and_log_prob(sample_shape)
        x, log_qx = self._path(u).rsample_and_log_prob()
        return torch.cat([u, x.flatten(-2)], -1), log_qu + log_qx

    def rsample(self, sample_shape=()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        P = self.theta_q.event_shape[0]
        u, x = value[..., :P], value[..., P:].reshape(*value.shape[:-1], -1, self.x0.shape[-1])
        return self.theta_q.log_prob(u) + self._path(u).log_prob(x)


class SDEPosterior(nn.Module):
    """Ryder et al.'s black-box posterior for an `EulerMaruyamaSDE` and one observed series.

    Args:
        sde: the model.
        y: ``[J, p]`` the observations (fixed: the guide is built for this series).
        hidden: hidden widths of the step network.
        state_scale: typical magnitude of the state, for input normalization.
        init_theta_scale: starting standard deviation of ``q(u)``.

    Calling it returns a `SDEJointPosterior`: with no argument its batch is ``[]``;
    called with the observations ``y [*B, J, p]`` (``B`` all ones, e.g. ``[1]``), as
    `SSMVI` calls every guide, its batch is ``[*B]``.  Those must be the series the
    guide was built for (checked: the guide conditions on them).

    References:
        Ryder, Golightly, McGough & Prangle, *Black-Box Variational Inference for Stochastic
        Differential Equations* (ICML 2018).
    """

    def __init__(
        self,
        sde: EulerMaruyamaSDE,
        y: Tensor,
        hidden: Sequence[int] = (64, 64),
        state_scale: float = 1.0,
        init_theta_scale: float = 0.1,
    ):
        super().__init__()
        P, K = sde.num_params, sde.num_steps
        self.step = BridgeStep(sde, hidden, state_scale)
        prior_mean = sde.theta_prior.mean if hasattr(sde.theta_prior, "mean") else torch.zeros(P)
        self.theta_loc = nn.Parameter(prior_mean.detach().clone().to(sde.x0.dtype))
        self.theta_off = nn.Parameter(torch.zeros(P, P, dtype=sde.x0.dtype))
        self.theta_diag = nn.Parameter(torch.full((P,), math.log(math.expm1(init_theta_scale)), dtype=sde.x0.dtype))
        # Static context of grid step k = 1..K (drawing x_k from x_{k-1}): time, the time left from
        # t_{k-1} to the next observation at or after k, whether there is one, and that observation.
        k = torch.arange(1, K + 1)
        raw = torch.searchsorted(sde.obs_index, k)  # first obs index >= k
        has_next = raw < sde.obs_index.numel()
        nxt = raw.clamp(max=sde.obs_index.numel() - 1)
        tau = ((sde.obs_index[nxt] - (k - 1)) * sde.dt).to(sde.x0.dtype) * has_next
        dtype = sde.x0.dtype
        ctx = [k.to(dtype) / K, tau / tau.max().clamp_min(sde.dt), tau, has_next.to(dtype)]
        self.register_buffer("static_context", torch.cat([torch.stack(ctx, -1), y[nxt] * has_next.unsqueeze(-1)], -1))
        self.register_buffer("x0", sde.x0)
        self.register_buffer("obs", y, persistent=False)  # to check forward's y against

    def theta_distribution(self) -> FullRankNormal:
        tril = self.theta_off.tril(-1) + torch.diag_embed(F.softplus(self.theta_diag) + 1e-5)
        return FullRankNormal(self.theta_loc, tril, validate_args=False)

    def forward(self, y: Tensor | None = None) -> SDEJointPosterior:
        """``q(u) q(x | u, y)``; ``y [*B, J, p]`` must be the guide's own series and sets the batch ``[*B]``."""
        theta_q = self.theta_distribution()
        if y is not None:
            batch = one_series(type(self).__name__, y, self.obs.shape[-2])
            if y.shape[-1] != self.obs.shape[-1] or not torch.equal(y.reshape(self.obs.shape), self.obs):
                raise ValueError("SDEPosterior: y differs from the observations this guide was built for")
            theta_q = theta_q.expand(batch)
        return SDEJointPosterior(theta_q, self.step, self.static_context, self.x0)
