"""A linear-Gaussian state-space model with learnable parameters, fitted by exact maximum likelihood.

`LinearGaussianSSM` does exact inference at given tensors; `KalmanSSM`
owns the tensors (parameters or buffers) and follows the zoo protocol:
``forward(y)`` returns a `vitorch.LossOutput` whose bound is the exact
Kalman log-likelihood of each sequence (no Monte Carlo: ``log_w = None``), so
`vitorch.fit` maximizes the likelihood, and ``predict(y)`` gives the RTS
smoother's means.  Learned covariances are stored as Cholesky factors with the
diagonal on the log scale (``C = L L^T``, ``L = tril(raw, -1) + diag(exp(diag(raw)))``),
so every optimizer step keeps them positive definite.

References:
    Durbin & Koopman, Time Series Analysis by State Space Methods (2012), ch. 7
    (maximum likelihood through the Kalman filter).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ...loss import LossOutput
from ._protocol import as_sequences
from .linear_gaussian import LinearGaussianSSM

__all__ = ["KalmanSSM"]

_NAMES = ("transition_matrix", "transition_cov", "emission_matrix", "emission_cov", "init_mean", "init_cov")
_COVS = ("transition_cov", "emission_cov", "init_cov")


class KalmanSSM(nn.Module):
    """Linear-Gaussian SSM ``x_t = F x_{t-1} + w_t``, ``y_t = H x_t + v_t`` trained by its exact likelihood.

    Args:
        transition_matrix: ``[D, D]`` ``F``.
        transition_cov: ``[D, D]`` ``Q``.
        emission_matrix: ``[p, D]`` ``H``.
        emission_cov: ``[p, p]`` ``R``.
        init_mean: ``[D]`` mean of ``x_1``.
        init_cov: ``[D, D]`` covariance of ``x_1``; ``None`` with ``diffuse=True``.
        diffuse: ``None``, ``True`` or a boolean mask ``[D]`` (see `LinearGaussianSSM`).
        learn: names of the arguments above to learn (default: every one given); the others
            are buffers.  A learned covariance must be positive definite at the start.

    The values are copied.  State: ``transition_matrix``, ``emission_matrix``, ``init_mean``
    as given; a learned covariance ``C`` as ``C_tril`` (its Cholesky factor, log diagonal), a
    fixed one as ``C``.

    A batch is ``y [B, T, p]``, one sequence per datum: ``bound [B]`` is ``log p(y_b)``
    (exact), ``loss = -mean(bound)``.

    Example:
        >>> model = ssm.KalmanSSM(F, Q, H, R, m1, diffuse=True, learn=("transition_cov", "emission_cov"))
        >>> vt.fit(model, y[None], steps=500, batch_size=1, lr=0.05)   # y [T, p]: one series
        >>> means = model.predict(y[None])                             # [1, T, D] smoothed means

    References:
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012), ch. 7.
        Kalman, *A New Approach to Linear Filtering and Prediction Problems* (J. Basic Eng., 1960).
    """

    def __init__(
        self,
        transition_matrix: Tensor,
        transition_cov: Tensor,
        emission_matrix: Tensor,
        emission_cov: Tensor,
        init_mean: Tensor,
        init_cov: Tensor | None = None,
        diffuse: bool | Tensor | None = None,
        learn: Iterable[str] | None = None,
    ):
        super().__init__()
        values = dict(zip(_NAMES, (transition_matrix, transition_cov, emission_matrix, emission_cov, init_mean)))
        values["init_cov"] = init_cov
        values = {k: None if v is None else torch.as_tensor(v).detach().clone() for k, v in values.items()}
        # The exact model checks shapes, finiteness and definiteness, naming the culprit.
        LinearGaussianSSM(*values.values(), diffuse=diffuse)
        given = [k for k, v in values.items() if v is not None]
        learn = set(given if learn is None else learn)
        unknown = sorted(learn - set(given))
        if unknown:
            raise ValueError(f"KalmanSSM: learn names {unknown}, which are not among the given {given}")
        for name in given:
            value = values[name]
            if name not in learn:
                self.register_buffer(name, value)
            elif name in _COVS:
                L, info = torch.linalg.cholesky_ex(value)
                if not bool((info == 0).all()):
                    raise ValueError(f"KalmanSSM: {name} must be positive definite to be learned")
                raw = L.tril(-1) + torch.diag_embed(L.diagonal(dim1=-2, dim2=-1).log())
                self.register_parameter(name + "_tril", nn.Parameter(raw))
            else:
                self.register_parameter(name, nn.Parameter(value))
        if isinstance(diffuse, Tensor):
            diffuse = tuple(bool(b) for b in diffuse.tolist())
        self.diffuse = diffuse

    def _value(self, name: str) -> Tensor | None:
        raw = self._parameters.get(name + "_tril")
        if raw is None:
            return getattr(self, name, None)
        L = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
        return L @ L.mT

    def ssm(self) -> LinearGaussianSSM:
        """The exact model at the current parameters (gradients flow to them)."""
        diffuse = torch.tensor(self.diffuse) if isinstance(self.diffuse, tuple) else self.diffuse
        return LinearGaussianSSM(*(self._value(n) for n in _NAMES), diffuse=diffuse, validate_args=False)

    def forward(self, y) -> LossOutput:
        """``y [B, T, p]`` -> exact per-sequence log-likelihood ``bound [B]``, ``loss = -mean(bound)``."""
        log_lik = self.ssm().log_prob(as_sequences(type(self).__name__, y))
        return LossOutput(loss=-log_lik.mean(), bound=log_lik, log_w=None, z=None)

    def log_prob(self, y: Tensor) -> Tensor:
        """``log p(y)`` for ``y [*B, T, p]`` -> ``[*B]`` (Kalman filter)."""
        return self.ssm().log_prob(y)

    def log_joint(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)`` for ``x [*S, *B, T, D]`` and ``y [*B, T, p]`` -> ``[*S, *B]`` (so VI can use it)."""
        return self.ssm().log_joint(x, y)

    @torch.no_grad()
    def predict(self, y) -> Tensor:
        """Smoothed state means ``E[x_t | y_{1:T}]``, ``[B, T, D]`` (RTS smoother; ``model.ssm().smooth`` also
        gives the covariances)."""
        return self.ssm().smooth(as_sequences(type(self).__name__, y))[0]
