"""Inducing-input initialization: greedy variance selection against a from-scratch oracle; k-means."""

from __future__ import annotations

import pytest
import torch

from vitorch.models import gp

from conftest import Z


def _oracle_greedy(x, m, k):
    """Recompute diag(K - K_xS K_SS^-1 K_Sx) from scratch at every step and take its argmax."""
    chosen = []
    for _ in range(m):
        if chosen:
            s = x[chosen]
            resid = k.diag(x) - (k(x, s) * torch.linalg.solve(k(s), k(s, x)).T).sum(-1)
        else:
            resid = k.diag(x)
        resid[chosen] = -1.0
        chosen.append(int(resid.argmax()))
    return chosen


def test_greedy_variance_matches_oracle():
    x = torch.randn(50, 2)
    k = gp.Matern32(torch.tensor([0.7, 1.2]))
    with torch.no_grad():
        _, idx = gp.greedy_variance(x, 8, k, return_indices=True)
        assert idx.tolist() == _oracle_greedy(x, 8, k)


def test_greedy_variance_with_all_points_gives_the_exact_evidence():
    x = torch.rand(25, 2) * 3
    y = torch.sin(x).sum(-1)
    k = gp.RBF(0.5)
    with torch.no_grad():
        z = gp.greedy_variance(x, 25, k)
        gap = gp.SGPR(k, z, noise=0.1).full_data_elbo(x, y) - gp.ExactGP(k, noise=0.1).log_marginal_likelihood(x, y)
    assert abs(float(gap)) < 1e-6  # the brief's tolerance for Z = X (here Z is X reordered)


def test_greedy_variance_stops_when_everything_is_explained():
    x = torch.randn(4, 2).repeat(5, 1)  # 20 rows, 4 distinct points
    with torch.no_grad():
        z = gp.greedy_variance(x, 10, gp.Linear(), threshold=1e-9)
    assert z.shape[0] <= 2 + 1  # a linear kernel in 2-D has rank 2; allow one rounding pick


def test_kmeans_recovers_separated_clusters():
    centres = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
    sd, n = 0.2, 60
    x = (centres.unsqueeze(1) + sd * torch.randn(3, n, 2)).reshape(-1, 2)
    c = gp.kmeans(x, 3)
    order = torch.cdist(centres, c).argmin(-1)
    # each centroid is a cluster mean: standard error sd / sqrt(n) per coordinate
    assert float((c[order] - centres).abs().max()) < Z * sd / n**0.5


def test_bad_sizes_raise():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="1 <= M <= N = 5"):
        gp.kmeans(x, 6)
    with pytest.raises(ValueError, match="1 <= M <= N = 5"):
        gp.greedy_variance(x, 0, gp.RBF())
