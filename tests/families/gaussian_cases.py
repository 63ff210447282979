"""Random, well-conditioned parameters for the three Gaussian families and their torch twins.

Every builder takes a batch shape, an event size ``D`` and an overall scale ``s``;
the covariance is ``s^2`` times a matrix whose eigenvalues stay within a small
factor of one, so that an error in the test reflects the family, not the
conditioning of the example.
"""

from __future__ import annotations

import torch
from torch.distributions import Independent, LowRankMultivariateNormal, MultivariateNormal, Normal

from vitorch.families import DiagNormal, FullRankNormal, LowRankNormal

FAMILIES = ("diag", "full", "lowrank")
RANK = 2


def params(kind: str, batch_shape, d: int, s: float = 1.0, rank: int = RANK) -> dict[str, torch.Tensor]:
    """Constructor keyword arguments for family ``kind`` with batch ``batch_shape`` and event ``[d]``."""
    b = tuple(batch_shape)
    # The mean scales with s: with |loc| >> s, z - loc would lose log10(|loc| / s) digits
    # to rounding before any family code runs.
    loc = s * torch.randn(*b, d)
    if kind == "diag":
        return {"loc": loc, "scale": s * torch.empty(*b, d).uniform_(0.5, 1.5)}
    if kind == "full":
        diag = torch.empty(*b, d).uniform_(0.5, 1.5)
        tril = torch.diag_embed(diag) + 0.3 * torch.randn(*b, d, d).tril(-1)
        return {"loc": loc, "scale_tril": s * tril}
    if kind == "lowrank":
        return {
            "loc": loc,
            "cov_factor": s * 0.5 * torch.randn(*b, d, rank),
            "cov_diag": s**2 * torch.empty(*b, d).uniform_(0.5, 1.5),
        }
    raise ValueError(f"unknown family kind {kind!r}")


CLASSES = {"diag": DiagNormal, "full": FullRankNormal, "lowrank": LowRankNormal}


def family(kind: str, p: dict[str, torch.Tensor], **kwargs):
    return CLASSES[kind](**p, **kwargs)


def torch_twin(kind: str, p: dict[str, torch.Tensor]):
    """The same law as a torch distribution: Independent(Normal), MultivariateNormal or LowRankMultivariateNormal."""
    if kind == "diag":
        return Independent(Normal(p["loc"], p["scale"]), 1)
    if kind == "full":
        return MultivariateNormal(p["loc"], scale_tril=p["scale_tril"])
    return LowRankMultivariateNormal(p["loc"], p["cov_factor"], p["cov_diag"])


def dense_cov(kind: str, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The covariance written out from the parameters, independently of the family code."""
    if kind == "diag":
        return torch.diag_embed(p["scale"] ** 2)
    if kind == "full":
        return p["scale_tril"] @ p["scale_tril"].mT
    return p["cov_factor"] @ p["cov_factor"].mT + torch.diag_embed(p["cov_diag"])


def dense_mvn(kind: str, p: dict[str, torch.Tensor]) -> MultivariateNormal:
    return MultivariateNormal(p["loc"], covariance_matrix=dense_cov(kind, p))
