"""The table of transforms every contract test runs over.

Each case builds a transform of a given event size ``D`` and context size ``C``
(``C = 0``: unconditional).  Parameters are perturbed after construction so that no
test passes merely because a transform starts at the identity.
"""

from __future__ import annotations

import torch

from vitorch import flows

HIDDEN = (16, 16)

# name -> (factory(D, C), whether it has parameters, whether it reads a context)
CASES = {
    "planar": (lambda d, c: flows.Planar(d, context_features=c, hidden=(8,)), True, True),
    "radial": (lambda d, c: flows.Radial(d, context_features=c, hidden=(8,)), True, True),
    "sylvester_householder": (
        lambda d, c: flows.HouseholderSylvester(d, reflections=2, context_features=c, hidden=(8,)),
        True,
        True,
    ),
    "sylvester_orthogonal": (
        lambda d, c: flows.OrthogonalSylvester(d, rank=max(d - 1, 1), context_features=c, hidden=(8,)),
        True,
        True,
    ),
    "iaf_affine": (lambda d, c: flows.IAF(d, hidden=HIDDEN, context_features=c), True, True),
    "maf_affine": (lambda d, c: flows.MAF(d, hidden=HIDDEN, context_features=c, order=range(d)[::-1]), True, True),
    "iaf_spline": (lambda d, c: flows.IAF(d, flows.RQSpline(bins=4, bound=3.0), HIDDEN, c), True, True),
    "maf_spline": (lambda d, c: flows.MAF(d, flows.RQSpline(bins=4, bound=3.0), HIDDEN, c), True, True),
    "coupling_affine": (lambda d, c: flows.AffineCoupling(d, hidden=HIDDEN, context_features=c), True, True),
    "coupling_spline": (
        lambda d, c: flows.SplineCoupling(d, hidden=HIDDEN, context_features=c, swap=True, bins=4, bound=3.0),
        True,
        True,
    ),
    "elementwise_affine": (lambda d, c: flows.ElementwiseAffine(d, context_features=c, hidden=(8,)), True, True),
    "lu_linear": (lambda d, c: flows.LULinear(d, context_features=c, hidden=(8,)), True, True),
    "permutation": (lambda d, c: flows.Permutation(d, perm=torch.randperm(d).tolist()), False, False),
    "softplus": (lambda d, c: flows.Softplus(d), False, False),
    "sigmoid": (lambda d, c: flows.Sigmoid(d), False, False),
}

NAMES = list(CASES)
WITH_PARAMS = [n for n in NAMES if CASES[n][1]]
CONDITIONAL = [n for n in NAMES if CASES[n][2]]
REAL_CODOMAIN = [n for n in NAMES if n not in ("softplus", "sigmoid")]


def make(name: str, dim: int, context_features: int = 0, spread: float = 0.3) -> flows.Transform:
    """Build case ``name`` and move its parameters away from their initial values."""
    t = CASES[name][0](dim, context_features)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(spread * torch.randn_like(p))
    return t
