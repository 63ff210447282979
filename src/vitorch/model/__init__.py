"""Models with named, constrained parameters: automatic guides and a posterior workflow.

Declare a model as a log-joint over named sites, each with a shape and a support;
fit a guide on the unconstrained space; read named constrained draws back::

    model = Model(log_joint, sites={"mu": Site(), "tau": Site(constraint=constraints.positive),
                                    "theta": Site(shape=(8,))})
    guide = AutoGuide(model, "full")                    # "diag" | "full" | "lowrank" | "flow" | "laplace"
    VI(model, guide, num_particles=8).fit(steps=2000)   # vt.fit, data-free
    post = Posterior(model, guide(), num_samples=4000)  # post["tau"] -> [4000]
    print(post.summary())

References:
    Kucukelbir, Tran, Ranganath, Gelman & Blei, *Automatic Differentiation Variational
    Inference* (JMLR 2017).
    Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling* (JMLR 2024).
"""

from .amortized import AmortizedGuide, group_features
from .bijections import Bijection, bijection_for, ordered_vector
from .fused import FusedStep
from .guides import (
    AutoDiagNormal,
    AutoFlow,
    AutoFullRankNormal,
    AutoGuide,
    AutoLowRankNormal,
    Standardize,
    default_flow,
)
from .hierarchical import HierarchicalModel, HierarchicalVI, StructuredGuide
from .laplace import AutoLaplace
from .mode import find_map, neg_hessian
from .model import Model
from .posterior import Posterior
from .site import Site
from .summary import Summary, summarize
from .vi import VI

__all__ = [
    "Model",
    "Site",
    "ordered_vector",
    "AutoGuide",
    "AutoDiagNormal",
    "AutoFullRankNormal",
    "AutoLowRankNormal",
    "AutoFlow",
    "AutoLaplace",
    "Standardize",
    "default_flow",
    "VI",
    "FusedStep",
    "HierarchicalModel",
    "StructuredGuide",
    "HierarchicalVI",
    "AmortizedGuide",
    "group_features",
    "Posterior",
    "Summary",
    "summarize",
    "find_map",
    "neg_hessian",
    "Bijection",
    "bijection_for",
]
