"""Amortized simulation-based inference: neural posterior estimation on conditional flows.

A user writes a prior (any torch distribution with event shape ``[D]``) and a batched
simulator ``theta [n, D] -> x [n, *x_shape]``; `simulate` draws training pairs,
`NPE` fits a conditional flow ``q(theta | x)`` to them with `vitorch.fit`, and
``npe.posterior(x_o)`` is the posterior at any observation, in one network pass.
`sequential_npe` focuses simulations on one observation (SNPE-C / APT);
`sbc_ranks` / `sbc_test`, `expected_coverage` and `c2st` check the result.

References:
    Papamakarios & Murray, *Fast epsilon-free inference of simulation models with Bayesian
    conditional density estimation* (NeurIPS 2016).
    Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
    likelihood-free inference* (ICML 2019).
    Cranmer, Brehmer & Louppe, *The frontier of simulation-based inference* (PNAS 2020).
"""

from .calibration import SBCResult, expected_coverage, sbc_ranks, sbc_test
from .embedding import DeepSetEmbedding, MLPEmbedding, Standardize
from .flows import build_flow
from .npe import NPE, atomic_log_prob, contrastive_indices
from .posterior import NPEPosterior
from .simulate import box_uniform, check_prior, simulate
from .training import sequential_npe, train_npe
from .twosample import c2st

__all__ = [
    "simulate",
    "box_uniform",
    "check_prior",
    "NPE",
    "NPEPosterior",
    "train_npe",
    "sequential_npe",
    "atomic_log_prob",
    "contrastive_indices",
    "build_flow",
    "Standardize",
    "MLPEmbedding",
    "DeepSetEmbedding",
    "sbc_ranks",
    "sbc_test",
    "SBCResult",
    "expected_coverage",
    "c2st",
]
