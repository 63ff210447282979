"""State-space models: exact Kalman inference as the oracle, variational inference for the rest.

* :class:`LinearGaussianSSM` — Kalman filter (sequential, or parallel by associative
  scan), RTS smoother, FFBS sampling, proper or diffuse initial states, and the
  exact posterior as a variational family (:meth:`LinearGaussianSSM.posterior`).
* :class:`GaussianMarkovChain` — a structured Gaussian family over whole paths.
"""

from .chain import GaussianMarkovChain, affine_recurrence
from .kalman import FilterResult, kalman_filter, rts_smoother
from .linear_gaussian import LinearGaussianSSM
from .parallel import parallel_kalman_filter

__all__ = [
    "LinearGaussianSSM",
    "GaussianMarkovChain",
    "FilterResult",
    "affine_recurrence",
    "kalman_filter",
    "parallel_kalman_filter",
    "rts_smoother",
]
