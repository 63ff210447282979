"""Storage layout of the dense weight posteriors: mean, Cholesky factor and spare entries in one tensor.

Row ``i`` of ``packed [O, D*(D+1) + S]`` is the ``D x (D+1)`` matrix ``[F_i | m_i]``
stored row-major, followed by ``S`` spare entries:

* ``F_i [D, D]``, the stored factor: its strict lower triangle is the factor's, its
  diagonal holds the log of the factor's diagonal, and its strict upper triangle is
  unused storage (always given a zero gradient);
* ``m_i [D]``, the mean, as the last column;
* the spare entries, which the owning head may use for per-row parameters of its own
  (the regression head keeps its learned log noise variance there).

One tensor instead of three saves the optimizer a dozen operations per step for each
tensor it no longer visits.  The mean sits beside the factor, as a column, because the
regression loss needs both ``Phi L_i`` and ``Phi m_i``: one product ``Phi [L_i | m_i]``
gives them together, and its gradient ``Phi^T G`` returns both blocks in one product.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024): the
    dense Gaussian weight posterior that this stores.
"""

from __future__ import annotations

from torch import Tensor


def unpack(packed: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Views ``(matrix [O, D, D+1], raw [O, D, D], mean [O, D], spare [O, S])`` of ``packed``."""
    o, size = packed.shape[0], d * (d + 1)
    matrix = packed[:, :size].view(o, d, d + 1)
    return matrix, matrix[..., :d], matrix[..., d], packed[:, size:]


def packed_size(d: int, spare: int) -> int:
    """Entries per row: ``D (D + 1) + S``."""
    return d * (d + 1) + spare
