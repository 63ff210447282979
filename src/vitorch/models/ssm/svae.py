"""Structured variational autoencoders: a linear dynamical system prior, neural Gaussian potentials, Kalman smoothing.

Generative model (`DeepLDS`)::

    x_1 ~ N(m_1, P_1),  x_t = F x_{t-1} + N(0, Q)     (learnable LDS prior, `LDSPrior`)
    y_t ~ p(y_t | x_t)                                  (any decoder returning a distribution)

Recognition (Johnson et al., 2016): an encoder maps each frame ``y_t`` to a Gaussian
*potential* ``phi_t(x_t) = exp(h_t^T x_t - x_t^T J_t x_t / 2)`` in natural parameters,
and the posterior is the prior times the potentials,

    q(x_{1:T}) = p(x_{1:T}) prod_t phi_t(x_t) / Z,

a linear-Gaussian model whose every marginal, pairwise law and normalizer the Kalman
smoother computes (sequentially or by the parallel scan of Särkkä & García-Fernández,
as Zhao & Linderman, 2023, do).  A potential is a Gaussian pseudo-observation
``N(J^{-1} h; x_t, J^{-1})`` up to a constant, which is how it enters the filter.  A
missing frame simply has no potential (and no likelihood term), so the smoother fills it
in from the prior: forecasting is inference with the future missing.

The bound, per sequence, with ``x^(k)`` reparameterized draws of ``q`` (by scan)::

    ELBO = 1/K sum_k log p(y | x^(k)) - KL(q || p),
    KL   = sum_t E_q[log phi_t(x_t)] - log Z        (closed form from the smoothed marginals).

Gradients reach the encoder, the decoder and the prior's parameters by automatic
differentiation through the smoother (Zhao & Linderman's choice, instead of the
original SVAE's natural-gradient surrogate).

References:
    Johnson, Duvenaud, Wiltschko, Datta & Adams, Composing Graphical Models with Neural
    Networks for Structured Representations and Fast Inference (NeurIPS 2016).
    Zhao & Linderman, Revisiting Structured Variational Autoencoders (ICML 2023).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as Fn

from ...loss import LossOutput
from .chain import GaussianMarkovChain
from .kalman import _mv
from .timevarying import tv_kalman_filter, tv_posterior_chain, tv_smoother

__all__ = ["LDSPrior", "GaussianPotentialEncoder", "DeepLDS", "SVAE", "SVAEPosterior"]

_LOG_2PI = math.log(2 * math.pi)


def _log_chol(raw: Tensor) -> Tensor:
    """Lower-triangular factor with a log-scale diagonal: ``tril(raw, -1) + diag(exp(diag(raw)))``."""
    return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())


def _raw_chol(cov: Tensor) -> Tensor:
    L = torch.linalg.cholesky(cov)
    return L.tril(-1) + torch.diag_embed(L.diagonal(dim1=-2, dim2=-1).log())


def _gauss(resid: Tensor, tril: Tensor) -> Tensor:
    u = torch.linalg.solve_triangular(tril, resid.unsqueeze(-1), upper=False).squeeze(-1)
    half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * u.pow(2).sum(-1) - half_log_det - 0.5 * resid.shape[-1] * _LOG_2PI


class LDSPrior(nn.Module):
    """Linear dynamical system prior ``x_1 ~ N(m_1, P_1)``, ``x_t = F x_{t-1} + N(0, Q)`` with learnable parameters.

    Args:
        state_dim: ``D``.
        transition_matrix: ``[D, D]`` starting ``F`` (default ``0.95 I``).
        transition_cov: ``[D, D]`` starting ``Q`` (default ``0.1 I``); stored by its log-Cholesky factor.
        init_mean: ``[D]`` starting ``m_1`` (default 0).
        init_cov: ``[D, D]`` starting ``P_1`` (default ``I``); log-Cholesky.
        learn: train the parameters (``False``: buffers).

    References:
        Johnson et al., *Composing Graphical Models with Neural Networks for Structured Representations
        and Fast Inference* (NeurIPS 2016); Zhao & Linderman, *Revisiting Structured Variational
        Autoencoders* (ICML 2023).
    """

    def __init__(
        self,
        state_dim: int,
        transition_matrix: Tensor | None = None,
        transition_cov: Tensor | None = None,
        init_mean: Tensor | None = None,
        init_cov: Tensor | None = None,
        learn: bool = True,
    ):
        super().__init__()
        if isinstance(state_dim, bool) or not isinstance(state_dim, int) or state_dim < 1:
            raise ValueError(f"LDSPrior: state_dim must be a positive integer; got {state_dim!r}")
        D, dtype = state_dim, torch.get_default_dtype()
        eye = torch.eye(D, dtype=dtype)
        values = {
            "transition_matrix": 0.95 * eye if transition_matrix is None else torch.as_tensor(transition_matrix),
            "transition_cov_raw": _raw_chol(0.1 * eye if transition_cov is None else torch.as_tensor(transition_cov)),
            "init_mean": torch.zeros(D, dtype=dtype) if init_mean is None else torch.as_tensor(init_mean),
            "init_cov_raw": _raw_chol(eye if init_cov is None else torch.as_tensor(init_cov)),
        }
        for name, v in values.items():
            shape = (D,) if name == "init_mean" else (D, D)
            if tuple(v.shape) != shape or not bool(torch.isfinite(v).all()):
                raise ValueError(f"LDSPrior: {name.removesuffix('_raw')} must be finite with shape {shape}")
            v = v.detach().clone()
            if learn:
                setattr(self, name, nn.Parameter(v))
            else:
                self.register_buffer(name, v)
        self.state_dim = D

    def matrices(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``F [D, D]``, ``Q [D, D]``, ``m_1 [D]``, ``P_1 [D, D]``."""
        Lq, Lp = _log_chol(self.transition_cov_raw), _log_chol(self.init_cov_raw)
        return self.transition_matrix, Lq @ Lq.mT, self.init_mean, Lp @ Lp.mT

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x_{1:T})`` for paths ``x [..., T, D]`` -> ``[...]``."""
        F = self.transition_matrix
        out = _gauss(x[..., 0, :] - self.init_mean, _log_chol(self.init_cov_raw))
        if x.shape[-2] > 1:
            out = out + _gauss(x[..., 1:, :] - _mv(F, x[..., :-1, :]), _log_chol(self.transition_cov_raw)).sum(-1)
        return out

    def step(self, x: Tensor, num_steps: int, sample: bool = True) -> Tensor:
        """Run the dynamics ``num_steps`` steps on from ``x [..., D]`` -> ``[..., num_steps, D]``.

        With ``sample=False`` the noise is left out (the mean path).
        """
        F, Lq = self.transition_matrix, _log_chol(self.transition_cov_raw)
        out = []
        for _ in range(num_steps):
            x = _mv(F, x)
            if sample:
                x = x + _mv(Lq, torch.randn_like(x))
            out.append(x)
        return torch.stack(out, -2)


class GaussianPotentialEncoder(nn.Module):
    """Per-frame recognition network: ``y_t [..., p]`` -> potentials ``(h_t, J_t)``, each ``[..., D]`` (diagonal ``J``).

    An MLP gives a location ``mu`` and a log-precision; ``J = softplus(.) + min_precision``
    and ``h = J mu``, so ``phi(x) = exp(h^T x - x^T diag(J) x / 2)``.

    Args:
        obs_dim: ``p``; state_dim: ``D``; hidden: widths of the hidden layers.
        min_precision: floor on ``J`` (keeps the pseudo-observation variance finite).
        net: a module ``[..., p] -> [..., 2 D]`` to use instead of the MLP (e.g. a CNN with a flatten).

    References:
        Johnson et al., *Composing Graphical Models with Neural Networks for Structured Representations
        and Fast Inference* (NeurIPS 2016).
    """

    def __init__(
        self,
        obs_dim: int,
        state_dim: int,
        hidden: tuple[int, ...] = (64,),
        min_precision: float = 1e-4,
        net: nn.Module | None = None,
    ):
        super().__init__()
        if net is None:
            layers, width = [], obs_dim
            for h in hidden:
                layers += [nn.Linear(width, h), nn.Tanh()]
                width = h
            net = nn.Sequential(*layers, nn.Linear(width, 2 * state_dim))
        self.net, self.state_dim, self.min_precision = net, state_dim, min_precision

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(y)
        loc, raw = out[..., : self.state_dim], out[..., self.state_dim :]
        prec = Fn.softplus(raw) + self.min_precision
        return prec * loc, prec


class DeepLDS(nn.Module):
    """``p(x, y) = LDS(x) prod_t p(y_t | x_t)`` with a neural decoder: the SVAE's generative model.

    Args:
        prior: an `LDSPrior`.
        decoder: ``x [..., T, D] -> Distribution`` with batch ``[..., T]`` and event ``[p]``
            (e.g. ``Independent(Normal(net(x), scale), 1)``).

    Its ``log_joint(x, y)`` makes it a model for `SSMVI` too, so the same generative model
    can be trained with another guide (e.g. `StructuredInferenceNetwork`) for comparison.

    References:
        Johnson et al., *Composing Graphical Models with Neural Networks for Structured Representations
        and Fast Inference* (NeurIPS 2016).
    """

    def __init__(self, prior: LDSPrior, decoder: nn.Module):
        super().__init__()
        self.prior, self.decoder = prior, decoder

    def log_lik(self, x: Tensor, y: Tensor, observed: Tensor | None = None) -> Tensor:
        """``sum_t log p(y_t | x_t)`` over observed frames: ``x [*S, *B, T, D]``, ``y [*B, T, p]`` -> ``[*S, *B]``."""
        lp = self.decoder(x).log_prob(y)
        if observed is not None:
            lp = torch.where(observed, lp, 0.0)
        return lp.sum(-1)

    def log_joint(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)`` for ``x [*S, *B, T, D]`` and ``y [*B, T, p]`` -> ``[*S, *B]``."""
        return self.prior.log_prob(x) + self.log_lik(x, y)


class SVAEPosterior(NamedTuple):
    """What `SVAE.posterior` returns; batch ``[B]`` first, then time.

    Attributes:
        q: the posterior over paths, a reverse-time `GaussianMarkovChain` (event ``[T, D]``).
        means: ``[B, T, D]`` smoothed means; covs: ``[B, T, D, D]`` smoothed covariances.
        kl: ``[B]`` ``KL(q || p)`` in closed form.

    References:
        Johnson et al., *Composing Graphical Models with Neural Networks for Structured Representations
        and Fast Inference* (NeurIPS 2016).
    """

    q: GaussianMarkovChain
    means: Tensor
    covs: Tensor
    kl: Tensor


def _unpack(batch) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, (tuple, list)):
        if len(batch) not in (1, 2) or not isinstance(batch[0], Tensor):
            raise TypeError("SVAE: a batch is y [B, T, p] or a pair (y [B, T, p], observed [B, T])")
        return batch[0], batch[1] if len(batch) == 2 else None
    if not isinstance(batch, Tensor):
        raise TypeError(f"SVAE: a batch is y [B, T, p] or (y, observed); got {type(batch).__name__}")
    return batch, None


class SVAE(nn.Module):
    """Structured VAE: Gaussian potentials from an encoder, combined with an LDS prior by Kalman smoothing.

    Args:
        model: the `DeepLDS` (prior and decoder).
        encoder: ``y [B, T, p] -> (h [B, T, D], J)`` with ``J [B, T, D]`` (diagonal precisions)
            or ``[B, T, D, D]`` (full, positive definite); e.g. `GaussianPotentialEncoder`.
        num_particles: ``K`` posterior draws for the expected log-likelihood.
        parallel: scan (``True``), loop (``False``), or by length (``None``: scan for ``T >= 16``).

    ``forward(y)`` or ``forward((y, observed))`` with ``observed [B, T]`` boolean returns a
    `vitorch.LossOutput` with ``bound [B]`` (the ELBO of each sequence) and
    ``loss = -mean(bound)``; missing frames have neither potential nor likelihood term.

    Example:
        >>> prior = ssm.LDSPrior(state_dim=4)
        >>> model = ssm.DeepLDS(prior, decoder)          # decoder(x) -> Independent(Normal(...), 1)
        >>> svae = ssm.SVAE(model, ssm.GaussianPotentialEncoder(obs_dim=p, state_dim=4))
        >>> vt.fit(svae, y_train, steps=500, batch_size=16, lr=1e-3)     # y_train [N, T, p]
        >>> post = svae.posterior(y, observed)             # smoothed means/covs, q, KL

    References:
        Johnson, Duvenaud, Wiltschko, Datta & Adams, *Composing Graphical Models with Neural Networks
        for Structured Representations and Fast Inference* (NeurIPS 2016); Zhao & Linderman,
        *Revisiting Structured Variational Autoencoders* (ICML 2023).
    """

    def __init__(self, model: DeepLDS, encoder: nn.Module, num_particles: int = 1, parallel: bool | None = None):
        super().__init__()
        if not isinstance(model, DeepLDS):
            raise TypeError(f"SVAE: model must be a DeepLDS; got {type(model).__name__}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"SVAE: num_particles must be a positive integer; got {num_particles!r}")
        self.model, self.encoder = model, encoder
        self.num_particles, self.parallel = num_particles, parallel

    def _check(self, y: Tensor, observed: Tensor | None) -> None:
        if y.dim() != 3:
            raise ValueError(f"SVAE: y must be [B, T, p] (one series: y[None]); got shape {tuple(y.shape)}")
        if observed is not None and (observed.dtype != torch.bool or observed.shape != y.shape[:2]):
            raise ValueError(
                f"SVAE: observed must be a boolean mask [B, T] = {list(y.shape[:2])}; got {observed.dtype} "
                f"{tuple(observed.shape)}"
            )

    def posterior_from_potentials(self, h: Tensor, J: Tensor, observed: Tensor | None = None) -> SVAEPosterior:
        """Combine potentials ``h [B, T, D]``, ``J [B, T, D(, D)]`` with the prior by Kalman smoothing."""
        B, T, D = h.shape
        full = J.dim() == h.dim() + 1
        if full:
            LJ = torch.linalg.cholesky(J)
            R, y_site = torch.cholesky_inverse(LJ), torch.cholesky_solve(h.unsqueeze(-1), LJ).squeeze(-1)
        else:
            if not bool((J > 0).all()):
                raise ValueError("SVAE: potential precisions J must be positive")
            R, y_site = torch.diag_embed(1.0 / J), h / J
        F, Q, m1, P1 = self.model.prior.matrices()
        eye = torch.eye(D, dtype=h.dtype, device=h.device)
        obs_t = None if observed is None else observed.T
        par = T >= 16 if self.parallel is None else bool(self.parallel)
        A = F.expand(T - 1, D, D)
        res = tv_kalman_filter(
            A, Q.expand(T - 1, D, D), eye.expand(T, D, D), R.movedim(1, 0), m1, P1, y_site.movedim(1, 0), obs_t, par
        )
        log_z = res.log_liks().sum(0)  # [B]: log of the pseudo-observations' evidence
        means, covs = tv_smoother(A, res, par)
        means, covs = means.movedim(0, 1), covs.movedim(0, 1)
        # E_q[log N(y~_t; x_t, J_t^{-1})], with J used directly (no inverse needed).
        resid = y_site - means
        if full:
            quad = (resid * _mv(J, resid)).sum(-1) + (J * covs).sum((-1, -2))
            log_det_j = 2 * LJ.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        else:
            quad = (J * (resid.pow(2) + covs.diagonal(dim1=-2, dim2=-1))).sum(-1)
            log_det_j = J.log().sum(-1)
        site = -0.5 * (D * _LOG_2PI - log_det_j + quad)
        if observed is not None:
            site = torch.where(observed, site, 0.0)
        return SVAEPosterior(tv_posterior_chain(A, res), means, covs, site.sum(-1) - log_z)

    def posterior(self, y: Tensor, observed: Tensor | None = None) -> SVAEPosterior:
        """``q(x_{1:T} | y)`` for ``y [B, T, p]`` (and an optional ``observed [B, T]`` mask)."""
        self._check(y, observed)
        h, J = self.encoder(y)
        if observed is not None:  # finite stand-ins where the potential is dropped
            o = observed.unsqueeze(-1)
            h = torch.where(o, h, 0.0)
            if J.dim() == h.dim() + 1:
                J = torch.where(o.unsqueeze(-1), J, torch.eye(J.shape[-1], dtype=J.dtype, device=J.device))
            else:
                J = torch.where(o, J, 1.0)
        return self.posterior_from_potentials(h, J, observed)

    def forward(self, batch) -> LossOutput:
        """ELBO per sequence: ``bound [B]`` and ``loss = -mean(bound)`` (closed-form KL, so no ``log_w``)."""
        y, observed = _unpack(batch)
        post = self.posterior(y, observed)
        x = post.q.rsample((self.num_particles,))  # [K, B, T, D]
        bound = self.model.log_lik(x, y, observed).mean(0) - post.kl
        return LossOutput(-bound.mean(), bound)

    @torch.no_grad()
    def predict(self, y: Tensor, observed: Tensor | None = None) -> Tensor:
        """Smoothed posterior means ``[B, T, D]`` (missing frames filled in by the prior's dynamics)."""
        return self.posterior(y, observed).means

    @torch.no_grad()
    def reconstruct(self, y: Tensor, observed: Tensor | None = None, num_samples: int = 16) -> Tensor:
        """``E_q[E[y_t | x_t]]`` by ``num_samples`` posterior draws: ``[B, T, p]`` (forecasts where unobserved)."""
        x = self.posterior(y, observed).q.sample((num_samples,))
        return self.model.decoder(x).mean.mean(0)
