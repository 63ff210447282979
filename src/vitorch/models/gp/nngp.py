"""Variational nearest-neighbour GP: each value conditions on its k nearest inducing points.

With inducing inputs ``Z [M, D]`` in a fixed order, the prior over ``u = f(Z)`` is replaced by
Vecchia's nearest-neighbour factorization, and each datum's ``f_n`` conditions only on its own
``k`` nearest inducing points:

    p~(u) = prod_j N(u_j; m_j + b_j^T (u_{n(j)} - m_{n(j)}), F_j),   n(j) = k nearest among Z_1..Z_{j-1},
    p~(f_n | u) = N(f_n; m_n + b_n^T (u_{n(x_n)} - m_{n(x_n)}), F_n),  n(x_n) = k nearest among Z,

``b = K_{nn}^{-1} k_{n.}`` and ``F = k.. - k_{.n} b`` for each neighbour set (``m`` the prior mean).
With a mean-field ``q(u) = prod_j N(m_j, s_j^2)`` every term of

    ELBO = sum_n E_q log p(y_n | f_n) - KL(q(u) || p~(u)),
    KL = sum_j [log F_j - log s_j^2 - 1 + ((m_j - m(z_j) - b_j^T (m_{n(j)} - m(z_{n(j)})))^2 + s_j^2
                + sum_i b_ji^2 s_{n(j)i}^2) / F_j] / 2

touches ``k + 1`` points, so a step costs ``O((B + J) k^3)`` for ``B`` data and ``J`` KL terms,
whatever ``M`` is: ``M`` can be ``10^4``–``10^5`` (and the inducing points the training inputs
themselves).  The KL is a sum over ``j``, estimated without bias from a random subset.  With
``k = M`` both approximations are exact and the model is an (unwhitened, diagonal) `SVGP`.

Neighbours are found by brute force, ``torch.cdist`` on row chunks of at most about four
million distances followed by ``topk`` (no KD-tree): ``O(M^2 D)`` once for the prior's
sequential sets (the inducing inputs are fixed), ``O(B M D)`` per batch of new inputs.

References:
    Wu, Pleiss & Cunningham, Variational Nearest Neighbor Gaussian Process (ICML 2022);
    Vecchia, Estimation and Model Identification for Continuous Spatial Processes (JRSS B 1988);
    Datta, Banerjee, Finley & Gelfand, Hierarchical Nearest-Neighbor Gaussian Process Models
    for Large Geostatistical Datasets (JASA 2016); Tran, Milios, Michiardi & Filippone, Sparse
    within Sparse Gaussian Processes using Neighbor Information (ICML 2021).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import kernels as vk
from ...families import DiagNormal
from ...loss import LossOutput
from .kernels import RBF, Kernel
from .likelihoods import Likelihood
from .linalg import NotPositiveDefiniteError, check_data, default_jitter, unpack_batch
from .means import ZeroMean
from .sgpr import inducing_parameter

__all__ = ["NNGP", "nearest_neighbours", "sequential_neighbours"]

_CHUNK = 1 << 22  # distances per cdist call: 32 MiB in float64


def nearest_neighbours(query: Tensor, ref: Tensor, k: int) -> Tensor:
    """Indices ``[Q, k]`` of the ``k`` rows of ``ref [R, D]`` nearest to each row of ``query [Q, D]``,
    nearest first; brute-force ``torch.cdist`` in row chunks.

    References:
        Wu, Pleiss & Cunningham, *Variational Nearest Neighbor Gaussian Process* (ICML 2022): each
        datum conditions on its k nearest inducing points.
    """
    rows = max(1, _CHUNK // max(ref.shape[0], 1))
    out = [torch.cdist(q, ref).topk(k, largest=False).indices for q in query.detach().split(rows)]
    return torch.cat(out)


def sequential_neighbours(z: Tensor, k: int) -> Tensor:
    """For each row ``j`` of ``z [M, D]``, the indices of its ``k`` nearest rows among ``0..j-1``,
    ``[M, k]``, padded with ``-1`` where ``j < k`` (Vecchia's conditioning sets).

    References:
        Vecchia, *Estimation and Model Identification for Continuous Spatial Processes* (JRSS B, 1988);
        Datta, Banerjee, Finley & Gelfand, *Hierarchical Nearest-Neighbor Gaussian Process Models*
        (JASA 2016).
    """
    z = z.detach()
    m = z.shape[0]
    out = torch.full((m, k), -1, dtype=torch.long, device=z.device)
    rows = max(1, _CHUNK // max(m, 1))
    for s in range(0, m, rows):
        e = min(s + rows, m)
        d = torch.cdist(z[s:e], z[:e])
        later = torch.arange(e, device=z.device).unsqueeze(0) >= torch.arange(s, e, device=z.device).unsqueeze(1)
        d = d.masked_fill(later, float("inf"))
        kk = min(k, e)
        top = d.topk(kk, largest=False)
        idx = top.indices.masked_fill(torch.isinf(top.values), -1)
        out[s:e, :kk] = idx
    return out


def _gram_blocks(kernel: Kernel, pts: Tensor) -> Tensor:
    """The kernel matrix of each block of points ``pts [B, n, D]``, ``[B, n, n]``.

    Any kernel goes through ``torch.func.vmap``.  An `RBF` on points that need no gradient (the
    fixed inducing inputs, data) is evaluated directly: the per-dimension squared differences are
    formed outside autograd, so the graph holds only their weighting by ``1 / lengthscale^2`` and
    the exponential (the step's largest cost after the solves).
    """
    if type(kernel) is RBF and not pts.requires_grad:
        inv_l2 = kernel.lengthscale.pow(-2)
        with torch.no_grad():
            sq = (pts.unsqueeze(-2) - pts.unsqueeze(-3)).pow(2)  # [B, n, n, D]
            if inv_l2.numel() == 1:
                sq = sq.sum(-1)
        # elementwise weights, not a matrix-vector product: a GEMV with D columns is slow for small D
        r2 = sq * inv_l2.reshape(()) if inv_l2.numel() == 1 else (sq * inv_l2).sum(-1)
        return (kernel.variance.log() - 0.5 * r2).exp()
    return torch.func.vmap(kernel)(pts)


class NNGP(nn.Module):
    """Variational nearest-neighbour GP (VNNGP) with any likelihood and minibatch training.

    Args:
        kernel: covariance function.
        inducing: inducing inputs ``Z [M, D]`` (fixed; their order defines the prior's conditioning
            sets: shuffle them, or use the training inputs in random order).
        likelihood: observation model.
        num_data: size ``N`` of the full training set.
        k: neighbours per conditioning set, ``1 <= k <= M``.
        mean: prior mean module (``ZeroMean`` if None).
        kl_batch_size: KL terms per `forward` on input batches: a random subset of this many
            inducing points estimates the KL without bias (``None``: all ``M``, exact).
        jitter: added to the diagonal of each neighbour block and to each conditional variance
            (default 0 in float64, 1e-6 in float32).
        init_scale: initial standard deviation of every ``q(u_j)`` (small values make the KL
            terms settle quickly, as in Wu et al.); means start at the prior mean.

    Raises:
        ValueError: for a bad ``k``, ``num_data``, ``kl_batch_size`` or ``Z``.
        TypeError: if ``Z``'s dtype differs from the kernel's.

    Example:
        >>> model = NNGP(RBF(), X[torch.randperm(N)], GaussianLikelihood(0.1), num_data=N, k=16)
        >>> out = model((X_b, y_b))        # f_n | its 16 nearest inducing points
        >>> out = model((idx_b, y[idx_b]))  # Z = X: a batch of indices uses q(u_idx) directly
        >>> mean, var = model.predict(X_test)

    Shapes: ``forward((X_b [B, D] or indices [B], y_b [B]))`` gives ``loss []`` and ``bound [B]``;
    ``predict(X [N*, D])`` gives mean and variance ``[N*]``; ``q()`` is a `DiagNormal` over ``u [M]``.

    References:
        Wu, Pleiss & Cunningham, *Variational Nearest Neighbor Gaussian Process* (ICML 2022).
        Tran, Milios, Michiardi & Filippone, *Sparse within Sparse Gaussian Processes using Neighbor
        Information* (ICML 2021).
    """

    def __init__(
        self,
        kernel: Kernel,
        inducing: Tensor,
        likelihood: Likelihood,
        num_data: int,
        k: int = 16,
        mean: nn.Module | None = None,
        kl_batch_size: int | None = None,
        jitter: float | None = None,
        init_scale: float = 1e-2,
    ):
        super().__init__()
        if isinstance(num_data, bool) or int(num_data) != num_data or int(num_data) < 1:
            raise ValueError(f"NNGP: num_data must be a positive integer; got {num_data!r}")
        z = inducing_parameter(inducing, "NNGP", learn=False, kernel=kernel)
        m = z.shape[0]
        if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= m:
            raise ValueError(f"NNGP: k must be an integer with 1 <= k <= M = {m}; got {k!r}")
        if kl_batch_size is not None and not 1 <= int(kl_batch_size) <= m:
            raise ValueError(f"NNGP: kl_batch_size must lie in [1, M = {m}] or be None; got {kl_batch_size!r}")
        if not init_scale > 0:
            raise ValueError(f"NNGP: init_scale must be positive; got {init_scale!r}")
        self.kernel, self.likelihood = kernel, likelihood
        self.mean = mean if mean is not None else ZeroMean()
        self.num_data, self.k = int(num_data), int(k)
        self.kl_batch_size = None if kl_batch_size is None else int(kl_batch_size)
        self.jitter = default_jitter(z.dtype) if jitter is None else float(jitter)
        self.register_buffer("inducing", z)
        self.register_buffer("prior_neighbours", sequential_neighbours(z, self.k))
        with torch.no_grad():
            self.q_loc = nn.Parameter(self.mean(z).detach().clone() + z.new_zeros(m))
        # stored unconstrained (only s^2 matters), as SVGP's q_diag
        self.q_scale = nn.Parameter(z.new_full((m,), float(init_scale)))

    # -- q(u) ------------------------------------------------------------------------
    def q(self) -> DiagNormal:
        """The mean-field ``q(u)``, event shape ``[M]``."""
        return DiagNormal(self.q_loc, self.q_scale.abs(), validate_args=False)

    def variational_parameters(self) -> list[nn.Parameter]:
        return [self.q_loc, self.q_scale]

    def hyperparameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("q_")]

    # -- conditionals ----------------------------------------------------------------
    def _conditional(self, pts: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """For blocks ``pts [B, k'+1, D]`` (the neighbours ``idx [B, k']``, ``-1`` = none, then the
        target): the weights ``b [B, k']``, conditional variances ``F [B]`` and the neighbours'
        prior means ``[B, k']`` (None for a zero mean)."""
        joint = _gram_blocks(self.kernel, pts)  # [B, k'+1, k'+1]
        missing = idx < 0
        if bool(missing.any()):  # only the first k inducing points have fewer than k predecessors
            # missing neighbours become independent unit-variance dummies with zero cross-covariance
            v = torch.cat([~missing, missing.new_ones(missing.shape[0], 1)], dim=-1).to(joint.dtype)
            pad = torch.cat([missing, missing.new_zeros(missing.shape[0], 1)], dim=-1).to(joint.dtype)
            joint = joint * (v.unsqueeze(-1) * v.unsqueeze(-2)) + torch.diag_embed(pad)
        try:
            b, var = vk.neighbour_solve(joint, self.jitter)
        except vk.NotPositiveDefiniteBlocks as err:
            raise NotPositiveDefiniteError(
                f"NNGP: {err.count} neighbour blocks are not positive definite; duplicated inducing "
                "inputs or a long lengthscale (increase jitter)"
            ) from err
        prior_mean = None  # a zero prior mean skips its terms (the common case, and the fast one)
        if not isinstance(self.mean, ZeroMean):
            prior_mean = self.mean(pts[:, :-1].reshape(-1, pts.shape[-1])).reshape(idx.shape)
        return b, var.clamp_min(self.jitter if self.jitter > 0 else 0.0), prior_mean

    def _marginal(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``q(f)`` mean and variance ``[B]`` at ``x`` conditioned on the inducing points ``idx``."""
        b, var, prior_mean = self._conditional(torch.cat([self.inducing[idx], x.unsqueeze(-2)], dim=-2), idx)
        centred = self.q_loc[idx] if prior_mean is None else self.q_loc[idx] - prior_mean
        mean = self.mean(x) + (b * centred).sum(-1)
        var = var + (b.pow(2) * self.q_scale[idx].pow(2)).sum(-1)
        return mean, var.clamp_min(1e-30)

    def _kl_parts(self, j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The KL terms ``[J]`` of inducing indices ``j [J]``, with ``q(u_j)``'s mean and variance ``[J]``."""
        nbr = self.prior_neighbours[j]
        both = torch.cat([nbr.clamp_min(0), j.unsqueeze(-1)], dim=-1)  # one gather each: neighbours, then j
        b, f, prior_mean = self._conditional(self.inducing[both], nbr)
        loc, s2 = self.q_loc[both], self.q_scale[both].pow(2)
        loc_j, s2_j = loc[:, -1], s2[:, -1]
        resid = loc_j - (b * loc[:, :-1]).sum(-1)
        if prior_mean is not None:
            resid = resid - self.mean(self.inducing[j]) + (b * prior_mean).sum(-1)
        quad = resid.pow(2) + s2_j + (b.pow(2) * s2[:, :-1]).sum(-1)
        return 0.5 * ((f / s2_j).log() - 1.0 + quad / f), loc_j, s2_j

    def kl_terms(self, j: Tensor) -> Tensor:
        """``KL(q || p~)``'s terms ``[J]`` for inducing indices ``j [J]`` (their sum over all ``M`` is the KL)."""
        return self._kl_parts(j)[0]

    def kl(self) -> Tensor:
        """The exact ``KL(q(u) || p~(u))``, a scalar (``O(M k^3)``, in chunks)."""
        m = self.inducing.shape[0]
        idx = torch.arange(m, device=self.inducing.device)
        rows = max(1, _CHUNK // (self.k + 1) ** 2)
        return sum(self.kl_terms(c).sum() for c in idx.split(rows))

    def _kl_estimate(self, j: Tensor | None) -> Tensor:
        m = self.inducing.shape[0]
        if j is None:
            if self.kl_batch_size is None or self.kl_batch_size == m:
                return self.kl()
            j = torch.randperm(m, device=self.inducing.device)[: self.kl_batch_size]
        return self.kl_terms(j).sum() * (m / j.shape[0])

    # -- the bound -----------------------------------------------------------------------
    def _terms(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(x, Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
            m = self.inducing.shape[0]
            if x.dim() != 1 or y.shape != x.shape:
                raise ValueError(f"NNGP: indices must be [B] with y [B]; got {tuple(x.shape)} and {tuple(y.shape)}")
            if bool(((x < 0) | (x >= m)).any()):
                raise ValueError(f"NNGP: inducing indices must lie in [0, M = {m})")
            self.likelihood.check_y(y)
            # Z = X: f_n is u_n itself, and the batch's own points estimate the KL (Wu et al., sec. 3)
            terms, loc, s2 = self._kl_parts(x)
            expected = self.likelihood.expected_log_prob(y, loc, s2.clamp_min(1e-30))
            return expected, terms.sum() * (m / x.shape[0])
        check_data("NNGP", x, y, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        self.likelihood.check_y(y)
        mean, var = self._marginal(x, nearest_neighbours(x, self.inducing, self.k))
        return self.likelihood.expected_log_prob(y, mean, var), self._kl_estimate(None)

    def forward(self, batch: tuple[Tensor, Tensor]) -> LossOutput:
        """Each datum's share of the bound on ``batch = (X_b [B, D] or indices [B], y_b [B])``.

        Returns:
            `vitorch.LossOutput` with ``bound [B] = E_q log p(y_n | f_n) - KL_est / N`` and
            ``loss = -mean(bound)``, unbiased for ``-ELBO / N``.
        """
        x, y = unpack_batch("NNGP", batch)
        expected, kl = self._terms(x, y)
        return LossOutput.from_terms(expected, kl, self.num_data)

    def full_data_elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """``N * mean_b E_q log p(y_b | f_b) - KL`` with the exact KL, a scalar (the ELBO on the full data)."""
        saved, self.kl_batch_size = self.kl_batch_size, None
        try:
            expected, kl = self._terms(x, y)
        finally:
            self.kl_batch_size = saved
        return expected.mean() * self.num_data - kl

    # -- prediction ----------------------------------------------------------------------
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``[N*]`` of the latent ``f`` at ``x [N*, D]``, each conditioned on its
        ``k`` nearest inducing points."""
        check_data("NNGP", x, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        rows = max(1, _CHUNK // (self.k + 1) ** 2)
        parts = [self._marginal(c, nearest_neighbours(c, self.inducing, self.k)) for c in x.split(rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def predict_y(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance ``[N*]`` of ``y``."""
        return self.likelihood.predict(*self.predict(x))

    def log_predictive(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(y_n | x_n, data)`` under the approximate posterior, ``[N*]``."""
        check_data("NNGP", x, y, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        self.likelihood.check_y(y)
        return self.likelihood.log_predictive(y, *self.predict(x))
