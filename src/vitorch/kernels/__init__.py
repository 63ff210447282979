"""One home for vitorch's fast code: every op beside its readable torch reference.

Each op lives in ``kernels/<op>/``: ``reference.py`` is readable torch (the
specification and the CPU path), the optional ``fused.py`` holds plain-torch
``autograd.Function`` s, and the optional ``triton.py`` the Triton kernels, imported
only when a call is sent there.  `.dispatch` picks the backend per call
(``"auto"`` never picks Triton); see ``docs/kernels.md``.  This package is a leaf: it
imports nothing from the families, flows, zoos or training, and never imports Triton.
"""

from __future__ import annotations

from .activation import tanh
from .bernoulli_linear import bernoulli_linear_log_prob
from .dispatch import KernelUnavailableError, backend, current_backend, triton_status
from .gamma import log_standard_gamma
from .gaussian import diag_normal_rsample_and_log_prob
from .likelihood import bernoulli_log_lik, gaussian_log_lik
from .logweights import logsumexp, normalized_weights
from .mmd import mmd
from .neighbour_solve import NotPositiveDefiniteBlocks, neighbour_solve
from .planar import planar_stack
from .rbf import rbf_cross
from .vbll_regression import vbll_heteroscedastic_bound, vbll_regression_bound
from .whitened_marginals import whitened_marginals

__all__ = [
    "KernelUnavailableError",
    "backend",
    "current_backend",
    "triton_status",
    "diag_normal_rsample_and_log_prob",
    "bernoulli_log_lik",
    "gaussian_log_lik",
    "logsumexp",
    "normalized_weights",
    "mmd",
    "log_standard_gamma",
    "planar_stack",
    "bernoulli_linear_log_prob",
    "tanh",
    "rbf_cross",
    "neighbour_solve",
    "NotPositiveDefiniteBlocks",
    "whitened_marginals",
    "vbll_regression_bound",
    "vbll_heteroscedastic_bound",
    "OPS",
]

# Every op: its name -> the subpackage holding reference.py (+ fused.py, triton.py) (the registry test reads this).
OPS = {
    "diag_normal_rsample_and_log_prob": "gaussian",
    "bernoulli_log_lik": "likelihood",
    "gaussian_log_lik": "likelihood",
    "logsumexp": "logweights",
    "normalized_weights": "logweights",
    "mmd": "mmd",
    "log_standard_gamma": "gamma",
    "planar_stack": "planar",
    "bernoulli_linear_log_prob": "bernoulli_linear",
    "tanh": "activation",
    "rbf_cross": "rbf",
    "neighbour_solve": "neighbour_solve",
    "whitened_marginals": "whitened_marginals",
    "vbll_regression_bound": "vbll_regression",
    "vbll_heteroscedastic_bound": "vbll_regression",
}
