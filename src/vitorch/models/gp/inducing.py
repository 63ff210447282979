"""Choosing inducing inputs: k-means centroids and greedy variance selection.

* `kmeans` — Lloyd's algorithm from a k-means++ start (Arthur &
  Vassilvitskii, 2007): centroids spread where the data are dense.
* `greedy_variance` — the pivoted (partial) Cholesky of ``K_nn``: repeatedly
  take the training input whose prior variance is least explained by those
  already chosen, i.e. the largest diagonal of ``K_nn - Q_nn``.  This drives
  ``tr(K_nn - Q_nn)``, the term that loosens Titsias' bound, down greedily, and
  is the initialization with convergence guarantees in Burt, Rasmussen & van der
  Wilk (2019).  ``O(N M^2)`` time, ``O(N M)`` memory, ``N M`` kernel evaluations.

References:
    Burt, Rasmussen & van der Wilk, Rates of Convergence for Sparse Variational
    Gaussian Process Regression (ICML 2019).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import Kernel
from .linalg import check_data

__all__ = ["kmeans", "greedy_variance"]


def _check_m(owner: str, x: Tensor, m: int) -> None:
    check_data(owner, x)
    if int(m) < 1 or int(m) > x.shape[0]:
        raise ValueError(f"{owner}: number of inducing inputs M must satisfy 1 <= M <= N = {x.shape[0]}; got {m}")


def kmeans(x: Tensor, m: int, iters: int = 25, generator: torch.Generator | None = None) -> Tensor:
    """``m`` k-means centroids of ``x [N, D]``, shape ``[m, D]``.

    Args:
        x: data.
        m: number of centroids (``1 <= m <= N``).
        iters: Lloyd iterations after the k-means++ start (stops early at a fixed point).
        generator: random source for the k-means++ draws.

    References:
        Lloyd, *Least Squares Quantization in PCM* (IEEE Trans. Inf. Theory, 1982).
        Arthur & Vassilvitskii, *k-means++: The Advantages of Careful Seeding* (SODA 2007).
        Hensman, Fusi & Lawrence, *Gaussian Processes for Big Data* (UAI 2013): k-means inducing inputs.
    """
    _check_m("kmeans", x, m)
    x = x.detach()
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centres = [x[first]]
    d2 = (x - centres[0]).pow(2).sum(-1)
    for _ in range(1, m):  # k-means++: draw the next centre with probability proportional to d^2
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        idx = torch.multinomial(p, 1, generator=generator)
        centres.append(x[idx])
        d2 = torch.minimum(d2, (x - x[idx]).pow(2).sum(-1))
    c = torch.cat(centres)
    assign = None
    for _ in range(iters):
        new_assign = torch.cdist(x, c).argmin(-1)
        if assign is not None and bool((new_assign == assign).all()):
            break
        assign = new_assign
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=m).to(x.dtype).unsqueeze(-1)
        # an emptied cluster keeps its old centre rather than collapsing to the origin
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
    return c


@torch.no_grad()
def greedy_variance(
    x: Tensor, m: int, kernel: Kernel, threshold: float = 0.0, return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Greedy variance selection of up to ``m`` inducing inputs among the rows of ``x``.

    Args:
        x: ``[N, D]`` training inputs.
        m: maximum number of inducing inputs.
        kernel: the prior covariance whose residual variance is reduced.
        threshold: stop once every residual variance ``diag(K_nn - Q_nn)`` is below this.
        return_indices: also return the chosen row indices.

    Returns:
        ``Z [M', D]`` with ``M' <= m`` (and ``indices [M']`` if asked).

    References:
        Burt, Rasmussen & van der Wilk, *Rates of Convergence for Sparse Variational Gaussian Process
        Regression* (ICML 2019) and *Convergence of Sparse Variational Inference in Gaussian Processes
        Regression* (JMLR 2020): greedy conditional-variance selection.
    """
    _check_m("greedy_variance", x, m)
    n = x.shape[0]
    resid = kernel.diag(x).clone()  # diag(K_nn - Q_nn), updated in place
    factor = x.new_zeros(n, m)  # rows of the partial Cholesky factor of K_nn
    chosen: list[int] = []
    for j in range(m):
        i = int(resid.argmax())
        if float(resid[i]) <= threshold or float(resid[i]) <= 0:
            break
        chosen.append(i)
        col = kernel(x, x[i : i + 1]).squeeze(-1) - factor[:, :j] @ factor[i, :j]
        col = col / resid[i].sqrt()
        factor[:, j] = col
        resid = (resid - col.pow(2)).clamp_min(0.0)
        resid[chosen] = 0.0  # chosen points are explained exactly; rounding must not re-pick them
    idx = torch.tensor(chosen, dtype=torch.long, device=x.device)
    z = x[idx].clone()
    return (z, idx) if return_indices else z
