"""Diagnostics for variational fits: importance-weight quality, gradient noise, posterior collapse.

The functions live in three modules: ``weights``, ``gradients`` and ``collapse``.

* `ess` and `psis` / `psis_khat` read the log-weights
  ``log_w [K, *batch]`` that `vitorch.loss` returns (``out.log_w``) and say
  how far ``q`` is from the posterior in the sense that matters for importance
  sampling (Yao et al., 2018).
* `gradient_snr` measures the signal-to-noise ratio of a stochastic
  gradient, the quantity Rainforth et al. (2018) use to compare estimators.
* `kl_per_dim`, `active_units` and `collapse_diagnostics` find
  latent dimensions that a VAE's encoder has stopped using (Burda et al., 2016).

Everything here except `kl_per_dim` is a measurement: it returns no
gradient, and no function touches ``.grad``.

References:
    Vehtari, Simpson, Gelman, Yao & Gabry, Pareto Smoothed Importance Sampling (2015-2024).
    Yao, Vehtari, Simpson & Gelman, Yes, but Did It Work?: Evaluating Variational Inference (2018).
    Zhang & Stephens, A New and Efficient Estimation Method for the Generalized Pareto
    Distribution (Technometrics, 2009).
    Rainforth et al., Tighter Variational Bounds are Not Necessarily Better (2018).
    Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016).
"""

from .collapse import ActiveUnits, CollapseDiagnostics, active_units, collapse_diagnostics, kl_per_dim
from .gradients import GradientSNR, gradient_snr
from .stein import ksd
from .weights import KHAT_GOOD, KHAT_OK, ess, psis, psis_khat

__all__ = [
    "ess",
    "psis",
    "psis_khat",
    "KHAT_GOOD",
    "KHAT_OK",
    "gradient_snr",
    "GradientSNR",
    "kl_per_dim",
    "active_units",
    "ActiveUnits",
    "collapse_diagnostics",
    "CollapseDiagnostics",
    "ksd",
]
