"""Loading ``state_dict``s saved before the heads stored their parameters apart (vitorch <= 0.4).

Before, a dense weight posterior (`vitorch.models.last_layer.Dense`,
`vitorch.models.last_layer.DensePrecision`) kept its mean and Cholesky factor in
one parameter ``packed [O, D*(D+1) + S]``: per row the ``D x (D+1)`` matrix ``[F_i | m_i]``
row-major (``F_i``: strict lower triangle of the factor, its log-diagonal on the diagonal),
then ``S`` spare entries, where `vitorch.models.last_layer.VBLLRegression` kept its
learned log noise variance and `vitorch.models.last_layer.VBLLHeteroscedasticRegression`
with a dense ``q(U)`` its log-variance offset; ``VBLLRegression`` saved a noise it did not
pack as ``log_noise``.  These functions rewrite such keys into today's (``mean``,
``raw_tril``, ``log_noise_variance``, ``log_noise_offset``) inside a module's
``_load_from_state_dict`` and return the keys they converted; `warn` then says so once.
"""

from __future__ import annotations

import warnings

from torch import Tensor

__all__ = ["unpack_posterior", "rename", "warn", "deprecated_fit"]


def warn(keys: list[str]) -> None:
    """One warning naming the converted ``keys`` (none if the list is empty)."""
    if keys:
        warnings.warn(
            f"loading a vitorch <= 0.4 VBLL state_dict: converted {keys} to the current parameters (mean, "
            "raw_tril, log_noise_variance, log_noise_offset); save the model again "
            "to store the new keys",
            UserWarning,
            stacklevel=4,
        )


def unpack_posterior(state_dict: dict, prefix: str, d: int) -> Tensor | None:
    """Replace ``prefix + "packed"`` by ``mean`` and ``raw_tril``; return the spare entries ``[O, S]``.

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
    state_dict[prefix + "raw_tril"] = raw.tril()  # the unused upper triangle: zeros
    return packed[:, size:]


def rename(state_dict: dict, old: str, new: str) -> bool:
    """Move ``state_dict[old]`` to ``new`` when only the old key is present; whether it did."""
    if old in state_dict and new not in state_dict:
        state_dict[new] = state_dict.pop(old)
        return True
    return False


def deprecated_fit(head) -> None:
    """Warn that ``head.fit`` is now ``head.solve_posterior`` (``fit`` is `vitorch.fit`'s name)."""
    name = type(head).__name__
    warnings.warn(
        f"{name}.fit is deprecated: it is now {name}.solve_posterior (the closed-form or L-BFGS posterior on "
        "frozen features); train end to end with vitorch.fit(VBLLModel(features, head, num_data), data)",
        DeprecationWarning,
        stacklevel=3,
    )
