"""Cholesky factorization with escalating jitter, and the checks that guard it.

A kernel matrix that is positive definite in exact arithmetic is often only
positive *semi*-definite in floating point (inducing inputs that nearly coincide,
long lengthscales).  `jittered_cholesky` first factors the matrix with the
caller's base jitter; if that fails it adds a jitter proportional to the mean
diagonal, growing tenfold per retry and warning on each, and finally raises
`NotPositiveDefiniteError` naming the matrix and its smallest eigenvalue.

Every solve downstream is triangular against this single factor: no dense
inverse is formed anywhere in `vitorch.models.gp`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = [
    "NotPositiveDefiniteError",
    "JitterWarning",
    "jittered_cholesky",
    "check_finite",
    "check_data",
    "default_jitter",
    "module_dtype",
    "unpack_batch",
]


class NotPositiveDefiniteError(ValueError):
    """A kernel matrix stayed non-positive-definite after every jitter retry.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006),
        section A.4 (Cholesky with added jitter).
        Higham, *Accuracy and Stability of Numerical Algorithms* (SIAM, 2nd ed. 2002), chapter 10.
    """


class JitterWarning(RuntimeWarning):
    """A Cholesky factorization needed more jitter than requested.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006),
        section A.4 (Cholesky with added jitter).
    """


# First escalated jitter, relative to the mean diagonal: a few hundred ulps of the
# diagonal, enough to absorb rounding in a kernel matrix, far below any signal.
_RELATIVE_JITTER = {torch.float64: 1e-10, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def default_jitter(dtype: torch.dtype) -> float:
    """The base jitter models add to ``K_mm``, relative to its mean diagonal.

    Zero in float64, where the collapsed bound with ``Z = X`` must equal the exact
    marginal likelihood to ``1e-6`` (a jitter ``eps`` shifts the bound by about
    ``N eps / (2 sigma^2)``); ``1e-6`` in float32, where rounding alone makes
    ``K_mm`` indefinite for a few hundred well-packed inducing inputs.
    """
    return 0.0 if dtype == torch.float64 else _RELATIVE_JITTER.get(dtype, 1e-6)


def check_finite(name: str, value: Tensor, owner: str = "") -> None:
    """Raise ``ValueError`` naming ``value`` if it holds NaN or infinity."""
    if not bool(torch.isfinite(value).all()):
        where = f"{owner}: " if owner else ""
        n_nan = int(torch.isnan(value).sum())
        n_inf = int(torch.isinf(value).sum())
        raise ValueError(
            f"{where}{name} must be finite; found {n_nan} NaN and {n_inf} infinite entries (shape {tuple(value.shape)})"
        )


def _add_diag(a: Tensor, jitter: Tensor | float) -> Tensor:
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return a + jitter * eye


def jittered_cholesky(a: Tensor, name: str = "K", jitter: float = 0.0, max_tries: int = 6) -> Tensor:
    """Lower Cholesky factor of ``a + jitter * mean(diag a) * I``, escalating the jitter on failure.

    Args:
        a: ``[*batch, M, M]`` symmetric matrix.
        name: the matrix's name in warnings and errors (e.g. ``"K_mm"``).
        jitter: base jitter relative to the mean diagonal, always added (no warning).
        max_tries: escalations after the first attempt; the ``i``-th adds
            ``max(jitter, r) * 10^i`` times the mean diagonal, ``r`` a dtype-dependent
            relative jitter (``1e-10`` in float64, ``1e-6`` in float32).

    Returns:
        ``[*batch, M, M]`` lower-triangular ``L`` with ``L L^T`` the jittered matrix.

    Raises:
        ValueError: if ``a`` contains NaN or infinity.
        NotPositiveDefiniteError: if no jitter up to the last retry makes ``a``
            factorizable; the message gives the smallest eigenvalue.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006),
        section A.4 (Cholesky with added jitter).
        Higham, *Accuracy and Stability of Numerical Algorithms* (SIAM, 2nd ed. 2002), chapter 10.
    """
    check_finite(name, a)
    scale = a.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).unsqueeze(-1).detach().abs().clamp_min(1e-30)
    first = _add_diag(a, jitter * scale) if jitter > 0 else a
    tril, info = torch.linalg.cholesky_ex(first)
    if not bool((info > 0).any()):
        return tril
    base = max(jitter, _RELATIVE_JITTER.get(a.dtype, 1e-6))
    for i in range(max_tries):
        rel = base * 10.0**i
        warnings.warn(
            f"{name} is not positive definite in {a.dtype}; retrying its Cholesky with jitter "
            f"{rel:.1e} x mean diagonal (retry {i + 1} of {max_tries})",
            JitterWarning,
            stacklevel=2,
        )
        tril, info = torch.linalg.cholesky_ex(_add_diag(a, rel * scale))
        if not bool((info > 0).any()):
            return tril
    smallest = float(torch.linalg.eigvalsh(a.detach().to(torch.float64)).min())
    raise NotPositiveDefiniteError(
        f"{name} is not positive definite even with jitter {rel:.1e} x mean diagonal; "
        f"its smallest eigenvalue is {smallest:.3e} (size {a.shape[-1]}, dtype {a.dtype}). "
        "Check for duplicated inducing inputs, a vanishing kernel variance, or NaN hyperparameters."
    )


def check_data(owner: str, x, y=None, dtype: torch.dtype | None = None, width: int | None = None) -> None:
    """Validate inputs ``x [N, D]`` and targets ``y [N]``: tensors, ``N >= 1``, shapes agree, values finite.

    Args:
        owner: the model's name in messages.
        x: ``[N, D]`` inputs.
        y: ``[N]`` targets, or None.
        dtype: the model's floating dtype; a floating ``x`` or ``y`` of another dtype is refused
            (an integer ``y``, e.g. class labels, is accepted).
        width: the ``D`` of the model's inducing inputs, which ``x`` must share.

    Raises:
        TypeError: naming ``X`` or ``y`` if it is not a tensor (e.g. a numpy array) or has the wrong dtype.
        ValueError: naming ``X`` or ``y`` and the problem (shape, empty batch, NaN or infinity).
    """
    for name, t in (("X", x), ("y", y)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{owner}: {name} must be a torch.Tensor; got {type(t).__module__}.{type(t).__name__} "
                f"(convert it with torch.as_tensor({name.lower()}, dtype={dtype or torch.get_default_dtype()}))"
            )
        wrong = t.is_floating_point() and dtype is not None and t.dtype != dtype
        if (name == "X" and not t.is_floating_point()) or wrong:
            raise TypeError(
                f"{owner}: {name} has dtype {t.dtype} but the model computes in {dtype}; convert it with "
                f"{name.lower()}.to({dtype}) (or the model with .to({t.dtype}) for a floating {name})"
            )
    if x.dim() != 2:
        raise ValueError(f"{owner}: X must have shape [N, D]; got {tuple(x.shape)}")
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"{owner}: X has D = {x.shape[-1]} columns but the inducing inputs Z have D = {width}")
    if x.shape[0] == 0:
        raise ValueError(f"{owner}: X is empty (shape {tuple(x.shape)}); a batch needs at least one row")
    check_finite("X", x, owner)
    if y is not None:
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{owner}: y must have shape [N] = [{x.shape[0]}] to match X; got {tuple(y.shape)}")
        check_finite("y", y, owner)


def unpack_batch(owner: str, batch) -> tuple[Tensor, Tensor]:
    """``(X, y)`` from a model's ``forward(batch)`` argument, a pair of tensors ``X [B, D]``, ``y [B]``.

    Raises:
        TypeError: naming ``batch`` if it is not a pair.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = (
            f"a {type(batch).__name__} of length {len(batch)}"
            if isinstance(batch, (tuple, list))
            else type(batch).__name__
        )
        raise TypeError(f"{owner}: forward(batch) takes batch = (X [B, D], y [B]); got {got}")
    return batch[0], batch[1]


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of ``module``'s first parameter or buffer (the default dtype if it has none)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()
