"""Normalizing-flow transforms (``nn.Module`` s with ``call_and_ladj`` and, where one
exists, ``inverse_and_ladj``).

The family they build, `vitorch.Flow`, and the module that returns one per
context, `ConditionalFlow`, live in `vitorch.families.flow` (with the
`Transform` interface in `vitorch.families.transform`); both are re-exported
here, so this package depends on the families and never the other way round.

========================  ==========================  ===========================
transform                 sampling pass               inverse (``log_prob``, STL, DReG)
========================  ==========================  ===========================
Planar, Radial            one, ``O(D)``               Newton solve / closed form
HouseholderSylvester,     one, ``O(DM + M^2)``        ``M`` scalar Newton solves
OrthogonalSylvester
IAF                       one MADE pass               ``D`` steps, ~one MADE pass
MAF                       ``D`` steps, ~one MADE pass one MADE pass
Coupling (Affine/Spline)  one network pass            one network pass
ElementwiseAffine,        one                         one
Softplus, Sigmoid,
Permutation, LULinear
========================  ==========================  ===========================

Every transform with parameters takes ``context_features`` and then reads a context.

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015).
    Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021).
"""

from ..families.flow import ConditionalFlow
from .autoregressive import IAF, MAF
from .base import NoInverseError, ParamNet, Transform
from .coupling import AffineCoupling, Coupling, SplineCoupling
from .elementwise import ElementwiseAffine, Sigmoid, Softplus
from .linear import LULinear, Permutation
from .made import MADE
from .planar import Planar
from .radial import Radial
from .sylvester import HouseholderSylvester, OrthogonalSylvester
from .univariate import AffineMap, RQSpline, SoftplusAffine, UnivariateMap

__all__ = [
    "Transform",
    "NoInverseError",
    "ParamNet",
    "ConditionalFlow",
    "Planar",
    "Radial",
    "HouseholderSylvester",
    "OrthogonalSylvester",
    "MADE",
    "MAF",
    "IAF",
    "Coupling",
    "AffineCoupling",
    "SplineCoupling",
    "UnivariateMap",
    "AffineMap",
    "SoftplusAffine",
    "RQSpline",
    "ElementwiseAffine",
    "Softplus",
    "Sigmoid",
    "Permutation",
    "LULinear",
]
