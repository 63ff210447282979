"""``Posterior``: named constrained draws from a fitted guide, importance weights and their diagnostics.

``Posterior(model, q, num_samples)`` draws ``z_s ~ q``, maps them to the sites'
constrained values and keeps the importance log-weights
``log w_s = model.log_density(z_s) - log q(z_s)``.  Those weights give

* Pareto-smoothed importance sampling (PSIS): expectations corrected for the guide's
  error, with the k-hat diagnostic saying whether the correction can be trusted
  (``k < 0.7``) and whether the guide itself is close (``k < 0.5``);
* the importance-sampled estimate of ``log p(data)`` (the IWAE bound at ``K = S``);
* per-scalar effective sample sizes (`vitorch.model.summary`).

References:
    Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling*
    (arXiv:1507.02646, 2015; JMLR 2024).
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational
    Inference* (ICML 2018).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..diagnostics import KHAT_OK, ess, psis
from ..families import Flow
from ..flows import RQSpline
from .model import Model
from .summary import Summary, summarize

__all__ = ["Posterior"]

_BOUND_WARN = 0.01  # fraction of draws outside a spline's interval that triggers a warning


class Posterior(Mapping):
    """Draws from a guide ``q`` as named constrained values, with PSIS weights.

    Args:
        model: the `vitorch.model.Model` the guide was fitted to.
        q: the fitted family on ``R^D`` (``guide()``), batch shape ``()``.
        num_samples: ``S``, the number of draws.

    ``post[name]`` is ``[S, *site_shape]``; ``post.z`` the unconstrained draws
    ``[S, D]``; ``post.log_w`` the log-weights ``[S]``; ``post.khat`` the PSIS k-hat of
    the weights (a 0-d tensor) and ``post.weights`` the normalized smoothed weights ``[S]``.

    Raises:
        TypeError: if ``model`` is not a Model or ``q`` not a distribution.
        ValueError: if ``q``'s event shape is not ``[D]``, its batch shape not ``()``,
            or ``num_samples < 1``.

    Warns:
        UserWarning: when a flow guide's draws leave a spline layer's interval (where
            it is the identity) more than 1 % of the time, and when k-hat exceeds 0.7.

    Example:
        >>> post = Posterior(model, guide(), num_samples=4000)
        >>> post["tau"].shape, post.summary()
        (torch.Size([4000]), ...)

    References:
        Vehtari et al., *Pareto Smoothed Importance Sampling* (JMLR 2024);
        Yao et al., *Yes, but Did It Work?* (ICML 2018).
    """

    def __init__(self, model: Model, q: Distribution, num_samples: int = 4000):
        if not isinstance(model, Model):
            raise TypeError(f"Posterior: model must be a vitorch Model; got {type(model).__name__}")
        if not isinstance(q, Distribution):
            raise TypeError(f"Posterior: q must be a family (call the guide: guide()); got {type(q).__name__}")
        if tuple(q.event_shape) != (model.dim,) or tuple(q.batch_shape) != ():
            raise ValueError(
                f"Posterior: q must have batch shape () and event shape [D] = [{model.dim}]; "
                f"got batch {tuple(q.batch_shape)} and event {tuple(q.event_shape)}"
            )
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"Posterior: num_samples must be an integer >= 1; got {num_samples!r}")
        self.model = model
        with torch.no_grad():
            fused = getattr(q, "rsample_and_log_prob", None)
            if fused is not None and getattr(q, "has_rsample", False):
                z, log_q = fused((num_samples,))
            else:
                z = q.sample((num_samples,))
                log_q = q.log_prob(z)
            self.z, self.log_q = z.detach(), log_q.detach()
            self.log_p = model.log_density(self.z)
            self.log_w = self.log_p - self.log_q
            self._draws = model.constrain(self.z)
            smoothed, self.khat = psis(self.log_w) if num_samples > 1 else (self.log_w, self.log_w.new_tensor(math.inf))
            self.weights = torch.softmax(smoothed, 0)
        if isinstance(q, Flow):
            _warn_spline_bounds(q)
        if num_samples > 20 and bool(self.khat > KHAT_OK):
            warnings.warn(
                f"PSIS k-hat = {self.khat.item():.2f} > {KHAT_OK}: the guide is far from the posterior, and "
                "importance-corrected estimates (and the evidence) are unreliable; fit longer or use a richer guide",
                stacklevel=2,
            )

    # ----- the mapping of names to draws ---------------------------------------------------

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._draws:
            raise KeyError(f"no site {name!r}; the sites are {list(self._draws)}")
        return self._draws[name]

    def __iter__(self):
        return iter(self._draws)

    def __len__(self) -> int:
        return len(self._draws)

    @property
    def num_samples(self) -> int:
        """``S``."""
        return self.z.shape[0]

    @property
    def ess(self) -> Tensor:
        """0-d importance effective sample size of the raw weights, in ``[1, S]``."""
        return ess(self.log_w)

    def log_evidence(self) -> tuple[Tensor, Tensor]:
        """``(log p(data) estimate, its standard error)``: ``log (1/S) sum_s w_s``, both 0-d.

        The estimate is the IWAE bound at ``K = S`` (Burda et al., 2016): biased low by
        about ``se^2 / 2``, consistent as ``S`` grows; the standard error is the delta
        method's ``sd(w) / (sqrt(S) mean(w))``, trustworthy while ``khat < 0.7``.
        """
        S = self.num_samples
        log_mean = torch.logsumexp(self.log_w, 0) - math.log(S)
        rel = torch.exp(self.log_w - log_mean)  # w / mean(w)
        se = rel.std() / math.sqrt(S) if S > 1 else rel.new_tensor(math.inf)
        return log_mean, se

    # ----- expectations --------------------------------------------------------------------

    def expect(self, f: Callable[[dict[str, Tensor]], Tensor], psis: bool = True) -> Tensor:
        """``E[f(params)]`` over the posterior: ``f`` maps the draws dict to ``[S, *shape]``.

        With ``psis=True`` (default) the draws are weighted by the Pareto-smoothed
        importance weights, correcting the guide's error where ``khat < 0.7``; with
        ``False`` it is the plain mean over ``q``'s draws.

        Returns:
            ``[*shape]``.
        """
        values = f(self._draws)
        if not isinstance(values, Tensor) or values.dim() < 1 or values.shape[0] != self.num_samples:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"Posterior.expect: f must return [S = {self.num_samples}, ...]; got {got}")
        if not psis:
            return values.mean(0)
        w = self.weights.reshape(-1, *([1] * (values.dim() - 1))).to(values.dtype)
        return (w * values).sum(0)

    def resample(self, num_samples: int | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draws resampled in proportion to the smoothed weights: ``{name: [num_samples, *shape]}``.

        Sampling-importance-resampling (Rubin, 1988) with the PSIS weights; useful to
        feed weighted draws to tools that expect equally weighted ones.
        """
        n = num_samples or self.num_samples
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return {k: v[idx] for k, v in self._draws.items()}

    def predictive(self, simulate: Callable[[dict[str, Tensor]], Tensor], weighted: bool = False) -> Tensor:
        """Posterior predictive draws: ``simulate`` maps the draws dict ``{name: [S, *shape]}`` to ``[S, ...]``.

        ``simulate`` draws new data given each parameter draw (vectorized over the
        leading ``S``), e.g. ``lambda p: Normal(p["theta"], sigma).sample()``.  With
        ``weighted=True`` the parameters are first resampled with the PSIS weights.
        """
        params = self.resample() if weighted else self._draws
        with torch.no_grad():
            y = simulate(params)
        if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != self.num_samples:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"Posterior.predictive: simulate must return [S = {self.num_samples}, ...]; got {got}")
        return y

    def summary(self, probs: tuple[float, ...] = (0.05, 0.5, 0.95), weighted: bool = False) -> Summary:
        """Per scalar: mean, sd, quantiles at ``probs``, importance ESS and k-hat (a `Summary`).

        Args:
            probs: quantile levels (default 5 %, 50 %, 95 %).
            weighted: compute mean, sd and quantiles with the PSIS weights instead of
                equally over ``q``'s draws.
        """
        return summarize(self._draws, self.log_w, self.weights, probs, weighted)

    def to_arviz(self, log_likelihood: Callable[[dict[str, Tensor]], Tensor] | None = None, resample: bool = False):
        """An ArviZ ``InferenceData`` with one chain of the draws (optional dependency ``arviz``).

        Args:
            log_likelihood: ``params -> [S, N]`` pointwise log-likelihoods, stored in the
                ``log_likelihood`` group (as ``"y"``) so ``az.loo`` works.
            resample: store PSIS-resampled (equally weighted) draws instead of ``q``'s.

        Raises:
            ImportError: if arviz is not installed (``pip install arviz``).
        """
        try:
            import arviz as az
        except ImportError:
            raise ImportError("Posterior.to_arviz needs arviz: pip install arviz") from None
        draws = self.resample() if resample else self._draws
        posterior = {k: v.detach().cpu().numpy()[None] for k, v in draws.items()}
        groups = {"posterior": posterior}
        if log_likelihood is not None:
            with torch.no_grad():
                groups["log_likelihood"] = {"y": log_likelihood(draws).detach().cpu().numpy()[None]}
        return az.from_dict(**groups)

    def __repr__(self) -> str:
        return f"Posterior(sites={list(self._draws)}, num_samples={self.num_samples}, khat={self.khat.item():.3g})"


def _warn_spline_bounds(q: Flow, num_samples: int = 2000) -> None:
    """Warn if a spline layer of ``q`` sees more than 1 % of its inputs outside ``[-bound, bound]``."""
    with torch.no_grad():
        x = q.base.sample((num_samples,))
        for i, t in enumerate(q.transforms):
            spline = getattr(t, "transformer", None)
            y, _ = t.call_and_ladj(x, q.context)
            if isinstance(spline, RQSpline):
                outside = ((x.abs() >= spline.bound) | (y.abs() >= spline.bound)).any(-1).double().mean().item()
                if outside > _BOUND_WARN:
                    warnings.warn(
                        f"{outside:.1%} of the flow's draws leave the interval [-{spline.bound}, {spline.bound}] of "
                        f"spline layer {i} ({type(t).__name__}), where the layer is the identity: the spline "
                        "cannot shape that mass. Standardize the layer's input (AutoFlow does) or widen its bound.",
                        stacklevel=3,
                    )
            x = y
