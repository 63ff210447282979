"""The posterior summary table: one row per scalar of every site.

Columns: ``mean``, ``sd``, the quantiles (``5%``, ``50%``, ``95%`` by default), the
importance ``ess`` and ``khat``.  The last two are *function-specific* (Vehtari et
al., 2024, sec. 3): for a scalar ``h``, with normalized smoothed weights ``w~``
and ``m = sum_s w~_s h_s``,

    ``ess_h = sum_s w~_s (h_s - m)^2 / sum_s w~_s^2 (h_s - m)^2``

(the posterior variance of ``h`` over the variance of its self-normalized estimate;
``S`` for equal weights), and ``khat_h`` is the larger of the weights' k-hat and the
k-hat of ``w |h - m|``, the terms whose tail decides that estimate's error.

References:
    Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling*
    (arXiv:1507.02646, 2015; JMLR 2024), sec. 3 (function-specific diagnostics).
    Kong, *A Note on Importance Sampling using Standardized Weights* (1992): the ESS.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..diagnostics import psis_khat

__all__ = ["Summary", "summarize"]


class Summary:
    """A table with one row per scalar parameter and named columns.

    Attributes:
        names: row names, ``"mu"``, ``"theta[0]"``, ``"L[1,0]"``.
        columns: column names, ``("mean", "sd", "5%", "50%", "95%", "ess", "khat")``.
        values: ``[R, C]`` float64 tensor of the table.

    ``summary["tau"]`` is that row as ``{column: float}``; ``summary.column("mean")``
    is ``[R]``; ``str(summary)`` is the printed table; `to_pandas` a DataFrame.

    References:
        Vehtari et al., *Pareto Smoothed Importance Sampling* (JMLR 2024), sec. 3.
    """

    def __init__(self, names: Sequence[str], columns: Sequence[str], values: Tensor):
        if values.shape != (len(names), len(columns)):
            raise ValueError(f"Summary: values {tuple(values.shape)} do not match {len(names)} x {len(columns)}")
        self.names, self.columns, self.values = list(names), tuple(columns), values

    def __getitem__(self, name: str) -> dict[str, float]:
        try:
            row = self.names.index(name)
        except ValueError:
            raise KeyError(
                f"no row {name!r}; rows are {self.names[:6]}{'...' if len(self.names) > 6 else ''}"
            ) from None
        return dict(zip(self.columns, self.values[row].tolist()))

    def column(self, name: str) -> Tensor:
        """``[R]`` one column."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns are {list(self.columns)}")
        return self.values[:, self.columns.index(name)]

    def __len__(self) -> int:
        return len(self.names)

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` (needs pandas: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Summary.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.values.numpy(), index=self.names, columns=list(self.columns))

    def __str__(self) -> str:
        width = max(8, *(len(n) for n in self.names))
        head = " " * width + "".join(f"{c:>10}" for c in self.columns)
        rows = [head]
        for name, row in zip(self.names, self.values.tolist()):
            cells = [f"{v:>10.1f}" if c == "ess" else f"{v:>10.3g}" for c, v in zip(self.columns, row)]
            rows.append(f"{name:<{width}}" + "".join(cells))
        return "\n".join(rows)

    __repr__ = __str__


def _row_names(name: str, shape: torch.Size) -> list[str]:
    if len(shape) == 0:
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in itertools.product(*(range(n) for n in shape))]


def _weighted_quantiles(values: Tensor, weights: Tensor, probs: Tensor) -> Tensor:
    """``[P, R]`` quantiles of each column of ``values [S, R]`` under ``weights [S]`` (summing to 1)."""
    sorted_values, order = values.sort(0)
    cdf = weights[order].cumsum(0)  # [S, R]
    # The first draw whose cumulative weight reaches p (the inverse of the weighted step CDF).
    idx = torch.searchsorted(cdf.mT.contiguous(), probs.expand(values.shape[1], -1).contiguous())
    idx = idx.clamp_max(values.shape[0] - 1).mT  # [P, R]
    return sorted_values.gather(0, idx)


def summarize(
    draws: Mapping[str, Tensor], log_w: Tensor, weights: Tensor, probs: Sequence[float], weighted: bool = False
) -> Summary:
    """The `Summary` of ``draws`` (``{name: [S, *shape]}``) with log-weights ``log_w [S]``.

    Args:
        draws: named draws, all with ``S`` leading.
        log_w: ``[S]`` raw importance log-weights (for k-hat).
        weights: ``[S]`` normalized Pareto-smoothed weights (for the ESS, and for the
            moments and quantiles when ``weighted``).
        probs: quantile levels in ``(0, 1)``.
        weighted: weight mean, sd and quantiles by ``weights``; else equal weights.

    References:
        Vehtari et al., *Pareto Smoothed Importance Sampling* (JMLR 2024), sec. 3.
    """
    if not all(0 < p < 1 for p in probs):
        raise ValueError(f"summary: quantile levels must lie in (0, 1); got {tuple(probs)}")
    S = log_w.shape[0]
    names = [n for k, v in draws.items() for n in _row_names(k, v.shape[1:])]
    values = torch.cat([v.reshape(S, -1) for v in draws.values()], 1).detach().to(torch.float64)
    w = weights.detach().to(torch.float64)
    p = torch.tensor(list(probs), dtype=torch.float64)
    if weighted:
        mean = (w.unsqueeze(-1) * values).sum(0)
        sd = (w.unsqueeze(-1) * (values - mean).pow(2)).sum(0).sqrt()
        quantiles = _weighted_quantiles(values, w, p)
    else:
        mean, sd = values.mean(0), values.std(0) if S > 1 else torch.zeros(values.shape[1], dtype=torch.float64)
        quantiles = torch.quantile(values, p, dim=0)
    centred = values - (w.unsqueeze(-1) * values).sum(0)
    wd = w.unsqueeze(-1) * centred.pow(2)
    num, den = wd.sum(0), (w.unsqueeze(-1) * wd).sum(0)
    ess_h = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 1.0 / w.pow(2).sum())
    lw = log_w.detach().to(torch.float64)
    k_w = psis_khat(lw)
    k_h = psis_khat(lw.unsqueeze(-1) + centred.abs().log())
    # A constant scalar (a correlation factor's fixed entries) has no error of its own: the weights' k-hat.
    khat = torch.where(den > 0, torch.maximum(k_w.expand_as(k_h), k_h), k_w)
    labels = [f"{100 * q:g}%" for q in probs]
    table = torch.stack([mean, sd, *quantiles, ess_h, khat], 1)
    return Summary(names, ("mean", "sd", *labels, "ess", "khat"), table)
