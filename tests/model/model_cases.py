"""Shared cases for the model-layer tests: one site per constraint with a *normalized* prior,
the free coordinates of each constrained value (for Jacobian checks), and a heavy-tailed
proposal for importance-sampled evidences."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import (
    Beta,
    Dirichlet,
    Distribution,
    Gamma,
    LKJCholesky,
    Normal,
    SoftplusTransform,
    Wishart,
    constraints,
)

from vitorch.model import Site, ordered_vector


def _gamma_shifted(x, shift):
    return Gamma(2.0, 1.0).log_prob(x - shift)


def _lower_cholesky_prior(L: Tensor) -> Tensor:
    # Off-diagonal entries N(0, 1), diagonal Gamma(2, 1): a normalized density on the n(n+1)/2 free entries.
    n = L.shape[-1]
    r, c = torch.tril_indices(n, n, -1)
    return Normal(0.0, 1.0).log_prob(L[..., r, c]).sum(-1) + Gamma(2.0, 1.0).log_prob(L.diagonal(dim1=-2, dim2=-1)).sum(
        -1
    )


def _ordered_prior(x: Tensor) -> Tensor:
    # The joint density of the order statistics of n iid N(0, 1): n! prod phi(x_i) on x_1 < ... < x_n.
    n = x.shape[-1]
    return math.lgamma(n + 1) + Normal(0.0, 1.0).log_prob(x).sum(-1)


# name -> (site, normalized log prior of the constrained value [*sample, *shape] -> [*sample])
PRIOR_CASES = {
    "real": (Site(), lambda x: Normal(0.5, 2.0).log_prob(x)),
    "real_matrix": (Site(shape=(2, 3)), lambda x: Normal(0.0, 1.0).log_prob(x).sum((-2, -1))),
    "positive": (Site(constraint=constraints.positive), lambda x: Gamma(2.0, 1.0).log_prob(x)),
    "positive_vector": (
        Site(shape=(3,), constraint=constraints.positive),
        lambda x: Gamma(3.0, 2.0).log_prob(x).sum(-1),
    ),
    "greater_than": (Site(constraint=constraints.greater_than(1.5)), lambda x: _gamma_shifted(x, 1.5)),
    "less_than": (Site(constraint=constraints.less_than(-1.0)), lambda x: Gamma(2.0, 1.0).log_prob(-1.0 - x)),
    "interval": (
        Site(constraint=constraints.interval(-1.0, 3.0)),
        lambda x: Beta(2.0, 3.0).log_prob((x + 1.0) / 4.0) - math.log(4.0),
    ),
    "unit_interval": (
        Site(shape=(2,), constraint=constraints.unit_interval),
        lambda x: Beta(2.0, 2.5).log_prob(x).sum(-1),
    ),
    "simplex": (
        Site(shape=(3,), constraint=constraints.simplex),
        lambda x: Dirichlet(torch.tensor([2.0, 3.0, 2.5])).log_prob(x),
    ),
    "lower_cholesky": (Site(shape=(2, 2), constraint=constraints.lower_cholesky), _lower_cholesky_prior),
    "corr_cholesky": (
        Site(shape=(3, 3), constraint=constraints.corr_cholesky),
        lambda x: LKJCholesky(3, 2.0).log_prob(x),
    ),
    "positive_definite": (
        Site(shape=(2, 2), constraint=constraints.positive_definite),
        lambda x: Wishart(df=torch.tensor(6.0), covariance_matrix=torch.eye(2)).log_prob(x),
    ),
    "ordered_vector": (Site(shape=(3,), constraint=ordered_vector), _ordered_prior),
    "user_transform": (Site(shape=(2,), transform=SoftplusTransform()), lambda x: Gamma(2.0, 1.5).log_prob(x).sum(-1)),
}


def free_coordinates(name: str, x: Tensor) -> Tensor:
    """The coordinates of a constrained value ``x [*shape]`` that its density is with respect to."""
    if name in ("lower_cholesky", "positive_definite"):
        r, c = torch.tril_indices(x.shape[-1], x.shape[-1])
        return x[..., r, c]
    if name == "corr_cholesky":
        r, c = torch.tril_indices(x.shape[-1], x.shape[-1], -1)
        return x[..., r, c]
    if name == "simplex":
        return x[..., :-1]
    return x.reshape(-1)


class StudentT(Distribution):
    """Multivariate Student-t ``loc + L eps sqrt(df / chi2_df)``: a proposal with polynomial tails, so the
    importance weights of every (exponentially tailed) target here are bounded and the IWAE standard
    error from the draws is trustworthy."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, scale_tril: Tensor, df: float = 5.0):
        self.loc, self.scale_tril, self.df = loc, scale_tril, df
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=False)

    def rsample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.event_shape
        eps = torch.randn(shape, dtype=self.loc.dtype)
        chi2 = torch.distributions.Chi2(torch.tensor(self.df, dtype=self.loc.dtype)).sample(shape[:-1])
        return self.loc + (eps @ self.scale_tril.mT) * (self.df / chi2).sqrt().unsqueeze(-1)

    def log_prob(self, z):
        d, df = self.loc.shape[-1], self.df
        u = torch.linalg.solve_triangular(self.scale_tril, (z - self.loc).unsqueeze(-1), upper=False).squeeze(-1)
        log_det = self.scale_tril.diagonal().log().sum()
        return (
            math.lgamma((df + d) / 2)
            - math.lgamma(df / 2)
            - 0.5 * d * math.log(df * math.pi)
            - log_det
            - 0.5 * (df + d) * torch.log1p(u.pow(2).sum(-1) / df)
        )


def iwae_log_z(log_w: Tensor) -> tuple[float, float]:
    """``(log mean w, its delta-method standard error sd(w) / (sqrt(K) mean(w)))`` from ``log_w [K]``."""
    K = log_w.shape[0]
    log_mean = torch.logsumexp(log_w, 0) - math.log(K)
    rel = torch.exp(log_w - log_mean)
    return log_mean.item(), (rel.std() / math.sqrt(K)).item()
