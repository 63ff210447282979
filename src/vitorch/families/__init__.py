"""Variational families: torch distributions with reparameterized draws, fused log-densities
and log-densities at stopped parameters."""

from . import kl as _kl  # noqa: F401  (registers closed-form KL divergences with torch)
from .base import Family, stopped
from .beta import Beta, RSVIBeta
from .concrete import (
    RelaxedBernoulli,
    RelaxedBernoulliStraightThrough,
    RelaxedOneHotCategorical,
    RelaxedOneHotCategoricalStraightThrough,
)
from .dirichlet import Dirichlet, RSVIDirichlet
from .flow import ConditionalFlow, Flow
from .gamma import Gamma, RSVIGamma
from .gaussian import DiagNormal, FullRankNormal, LowRankNormal
from .heads import DiagNormalHead, FullRankNormalHead, LowRankNormalHead
from .mixflow import MixFlow

__all__ = [
    "Family",
    "stopped",
    "DiagNormal",
    "FullRankNormal",
    "LowRankNormal",
    "Flow",
    "ConditionalFlow",
    "Gamma",
    "Beta",
    "Dirichlet",
    "RSVIGamma",
    "RSVIBeta",
    "RSVIDirichlet",
    "DiagNormalHead",
    "FullRankNormalHead",
    "LowRankNormalHead",
    "RelaxedOneHotCategorical",
    "RelaxedOneHotCategoricalStraightThrough",
    "RelaxedBernoulli",
    "RelaxedBernoulliStraightThrough",
    "MixFlow",
]
