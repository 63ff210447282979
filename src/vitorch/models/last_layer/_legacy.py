"""Loading ``state_dict``s saved before the heads stored their parameters apart (vitorch <= 0.4).

Before, a dense weight posterior (:class:`~vitorch.models.last_layer.Dense`,
:class:`~vitorch.models.last_layer.DensePrecision`) kept its mean and Cholesky factor in
one parameter ``packed [O, D*(D+1) + S]``: per row the ``D x (D+1)`` matrix ``[F_i | m_i]``
row-major (``F_i``: strict lower triangle of the factor, its log-diagonal on the diagonal),
then ``S`` spare entries, where :class:`~vitorch.models.last_layer.VBLLRegression` kept its
learned log noise variance and :class:`~vitorch.models.last_layer.VBLLHeteroscedasticRegression`
with a dense ``q(U)`` its log-variance offset.  ``VBLLRegression`` saved its prior scale as
extra state ``{"prior_scale": s}`` and a noise it did not pack as ``log_noise``.  These
functions rewrite such keys into today's (``mean``, ``offdiag``, ``log_diag``,
``log_noise_variance``, ``log_prior_scale``, ``log_noise_offset``) inside a module's
``_load_from_state_dict`` and return the keys they converted; :func:`warn` then says so once.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from . import _checks

__all__ = ["unpack_posterior", "rename", "prior_scale_from_extra_state", "warn", "deprecated_fit"]


def warn(keys: list[str]) -> None:
    """One warning naming the converted ``keys`` (none if the list is empty)."""
    if keys:
        warnings.warn(
            f"loading a vitorch <= 0.4 VBLL state_dict: converted {keys} to the current parameters (mean, "
            "offdiag, log_diag, log_noise_variance, log_prior_scale, log_noise_offset); save the model again "
            "to store the new keys",
            UserWarning,
            stacklevel=4,
        )


def unpack_posterior(state_dict: dict, prefix: str, d: int) -> Tensor | None:
    """Replace ``prefix + "packed"`` by ``mean``, ``offdiag`` and ``log_diag``; return the spare entries ``[O, S]``.

    Returns ``None`` (and changes nothing) when the key is absent.
    """
    key = prefix + "packed"
    packed = state_dict.pop(key, None)
    if packed is None:
        return None
    size = d * (d + 1)
    if packed.dim() != 2 or packed.shape[1] < size:
        raise ValueError(f"{key}: expected a [O, {size} + S] packed posterior for D = {d}; got {tuple(packed.shape)}")
    matrix = packed[:, :size].reshape(-1, d, d + 1)
    raw = matrix[..., :d]
    state_dict[prefix + "mean"] = matrix[..., d].clone()
    state_dict[prefix + "offdiag"] = raw.tril(-1)
    state_dict[prefix + "log_diag"] = raw.diagonal(dim1=-2, dim2=-1).clone()
    return packed[:, size:]


def rename(state_dict: dict, old: str, new: str) -> bool:
    """Move ``state_dict[old]`` to ``new`` when only the old key is present; whether it did."""
    if old in state_dict and new not in state_dict:
        state_dict[new] = state_dict.pop(old)
        return True
    return False


def prior_scale_from_extra_state(state_dict: dict, prefix: str, owner: str) -> bool:
    """Turn ``_extra_state = {"prior_scale": s}`` into the buffer ``log_prior_scale = log s``; whether it did."""
    key = prefix + "_extra_state"
    if key not in state_dict:
        return False
    extra = state_dict.pop(key)
    if not isinstance(extra, dict) or "prior_scale" not in extra:
        raise ValueError(f"{owner}: {key} must be a dict with 'prior_scale'; got {extra!r}")
    s = _checks.positive_float(owner, "prior_scale", extra["prior_scale"])
    state_dict[prefix + "log_prior_scale"] = torch.tensor(math.log(s), dtype=torch.float64)
    return True


def deprecated_fit(head) -> None:
    """Warn that ``head.fit`` is now ``head.solve_posterior`` (``fit`` is :func:`vitorch.fit`'s name)."""
    name = type(head).__name__
    warnings.warn(
        f"{name}.fit is deprecated: it is now {name}.solve_posterior (the closed-form or L-BFGS posterior on "
        "frozen features); train end to end with vitorch.fit(VBLLModel(features, head, num_data), data)",
        DeprecationWarning,
        stacklevel=3,
    )
