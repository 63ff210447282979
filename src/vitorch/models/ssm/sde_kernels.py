"""Stationary Gaussian-process kernels on time as linear SDEs (state-space form).

A GP ``f(t)`` with a Matérn kernel of half-integer order is the output ``f = H x`` of a
linear time-invariant SDE ``dx = F x dt + L dW`` with white-noise spectral density
``Qc``, started from its stationary law ``x ~ N(0, Pinf)``, where ``Pinf`` solves the
Lyapunov equation ``F Pinf + Pinf F^T + L Qc L^T = 0``.  Between two times ``dt``
apart the state moves by ``x' = A x + w`` with

    A = expm(F dt),     w ~ N(0, Q),    Q = Pinf - A Pinf A^T,

the second identity holding because the process is stationary; it needs no
integral of ``Qc`` and works for any (irregular) spacing.  A Kalman filter over these
transitions then gives the exact GP log marginal likelihood and posterior in ``O(T)``.

Supported kernels (from `vitorch.models.gp`), all on one-dimensional inputs:

* `Matern12`, `Matern32`, `Matern52`: exact state dimensions 1, 2, 3.
* `Sum`: block-diagonal state, ``H = [H_1, H_2]``.
* `Scale`: multiplies ``Pinf`` (and ``Qc``).
* `Product` of two supported kernels: Kronecker state, ``F = F_1 (+) F_2`` (Kronecker
  sum), ``Pinf = Pinf_1 (x) Pinf_2``, ``H = H_1 (x) H_2``.  ``Periodic * Matern32`` is
  the quasi-periodic kernel of Solin & Särkkä (2014).
* `Periodic` (MacKay's ``s^2 exp(-2 sin^2(pi tau / p) / l^2)``) through its cosine series
  ``s^2 sum_j c_j cos(j w0 tau)`` with ``c_0 = I_0(l^-2) e^{-l^-2}``,
  ``c_j = 2 I_j(l^-2) e^{-l^-2}`` (``I_j`` modified Bessel functions, ``w0 = 2 pi / p``),
  truncated after ``num_harmonics`` terms: one resonator ``F_j = [[0, -j w0], [j w0, 0]]``
  per harmonic.  This is the only approximation here; its error at ``tau = 0`` (the
  largest anywhere, as every term is at most ``c_j``) is `periodic_truncation` .

References:
    Hartikainen & Särkkä, Kalman Filtering and Smoothing Solutions to Temporal Gaussian
    Process Regression Models (MLSP 2010).
    Särkkä & Solin, Applied Stochastic Differential Equations (CUP 2019), ch. 12.
    Solin & Särkkä, Explicit Link Between Periodic Covariance Functions and State Space
    Models (AISTATS 2014).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..gp.kernels import Kernel, Matern12, Matern32, Matern52, Periodic, Product, Scale, Sum

__all__ = ["StateSpaceForm", "state_space", "discretize", "periodic_coefficients", "periodic_truncation"]


class StateSpaceForm(NamedTuple):
    """The SDE ``dx = F x dt + L dW`` (spectral density ``Qc``), stationary covariance and output.

    Attributes:
        F: ``[D, D]`` feedback matrix.
        L: ``[D, S]`` noise effect matrix.
        Qc: ``[S, S]`` white-noise spectral density.
        Pinf: ``[D, D]`` stationary covariance, solving ``F Pinf + Pinf F^T + L Qc L^T = 0``.
        H: ``[1, D]`` output row, ``f(t) = H x(t)``.

    References:
        Särkkä & Solin, *Applied Stochastic Differential Equations* (CUP 2019), ch. 12.
    """

    F: Tensor
    L: Tensor
    Qc: Tensor
    Pinf: Tensor
    H: Tensor


def _scalar(owner: str, name: str, value: Tensor) -> Tensor:
    if value.numel() != 1:
        raise ValueError(f"{owner}: a state-space GP is a function of time (one input); {name} must be a scalar")
    return value.reshape(())


def _matern(kernel: Kernel) -> StateSpaceForm:
    name = type(kernel).__name__
    ell, s2 = _scalar(name, "lengthscale", kernel.lengthscale), _scalar(name, "variance", kernel.variance)
    one, zero = torch.ones_like(ell), torch.zeros_like(ell)
    if isinstance(kernel, Matern12):
        lam = 1.0 / ell
        F = (-lam).reshape(1, 1)
        Qc = (2 * s2 * lam).reshape(1, 1)
        Pinf = s2.reshape(1, 1)
    elif isinstance(kernel, Matern32):
        lam = math.sqrt(3.0) / ell
        F = torch.stack([torch.stack([zero, one]), torch.stack([-(lam**2), -2 * lam])])
        Qc = (4 * s2 * lam**3).reshape(1, 1)
        Pinf = torch.diag_embed(torch.stack([s2, s2 * lam**2]))
    else:
        lam = math.sqrt(5.0) / ell
        F = torch.stack(
            [
                torch.stack([zero, one, zero]),
                torch.stack([zero, zero, one]),
                torch.stack([-(lam**3), -3 * lam**2, -3 * lam]),
            ]
        )
        Qc = (16.0 / 3.0 * s2 * lam**5).reshape(1, 1)
        k = s2 * lam**2 / 3
        Pinf = torch.stack(
            [torch.stack([s2, zero, -k]), torch.stack([zero, k, zero]), torch.stack([-k, zero, s2 * lam**4])]
        )
    D = F.shape[-1]
    L = torch.zeros(D, 1, dtype=F.dtype, device=F.device)
    L[-1, 0] = 1.0
    H = torch.zeros(1, D, dtype=F.dtype, device=F.device)
    H[0, 0] = 1.0
    return StateSpaceForm(F, L, Qc, Pinf, H)


def periodic_coefficients(lengthscale: Tensor, num_harmonics: int, num_nodes: int | None = None) -> Tensor:
    """``[J + 1]`` cosine-series weights ``c_j`` of ``exp(-2 sin^2(pi tau / p) / l^2) = sum_j c_j cos(j w0 tau)``.

    ``c_j = (2 - [j = 0]) I_j(x) e^{-x}`` with ``x = l^-2``: computed as the Fourier
    coefficients of the periodic, analytic function ``exp(x (cos(theta) - 1))`` by the
    trapezoidal rule on ``num_nodes`` points, which converges geometrically (its error
    is the aliased coefficient ``c_{N - j}``) and is differentiable in ``l`` without a
    Bessel routine for every order.

    Args:
        lengthscale: scalar ``l``.
        num_harmonics: ``J``.
        num_nodes: quadrature nodes (default ``4 J + 128 + 8 sqrt(x)``).

    References:
        Solin & Särkkä, *Explicit Link Between Periodic Covariance Functions and State Space
        Models* (AISTATS 2014), eq. (9).
    """
    x = lengthscale.reshape(()).pow(-2)
    if num_nodes is None:
        num_nodes = 4 * num_harmonics + 128 + 8 * math.ceil(math.sqrt(float(x.detach())))
    theta = torch.arange(num_nodes, dtype=x.dtype, device=x.device) * (2 * math.pi / num_nodes)
    vals = torch.exp(x * (torch.cos(theta) - 1))
    j = torch.arange(num_harmonics + 1, dtype=x.dtype, device=x.device)
    c = (torch.cos(j[:, None] * theta) * vals).mean(-1) * 2
    return torch.cat([c[:1] / 2, c[1:]])


def periodic_truncation(kernel: Periodic, num_harmonics: int) -> float:
    """Largest absolute error of the truncated series against the kernel: ``s^2 (1 - sum_{j <= J} c_j)``."""
    c = periodic_coefficients(_scalar("Periodic", "lengthscale", kernel.lengthscale), num_harmonics)
    return float((kernel.variance.reshape(()) * (1 - c.sum())).detach())


def _periodic(kernel: Periodic, num_harmonics: int) -> StateSpaceForm:
    ell, s2 = _scalar("Periodic", "lengthscale", kernel.lengthscale), _scalar("Periodic", "variance", kernel.variance)
    w0 = 2 * math.pi / _scalar("Periodic", "period", kernel.period)
    c = periodic_coefficients(ell, num_harmonics) * s2
    dt, dev = c.dtype, c.device
    # Harmonic 0 is a constant (one state); harmonic j >= 1 a resonator (two states).
    blocks_F = [torch.zeros(1, 1, dtype=dt, device=dev)]
    for j in range(1, num_harmonics + 1):
        wj = j * w0
        z = torch.zeros_like(wj)
        blocks_F.append(torch.stack([torch.stack([z, -wj]), torch.stack([wj, z])]))
    F = torch.block_diag(*blocks_F)
    Pinf = torch.diag_embed(torch.cat([c[:1], c[1:].repeat_interleave(2)]))
    D = F.shape[-1]
    H = torch.zeros(1, D, dtype=dt, device=dev)
    H[0, 0] = 1.0
    H[0, 1::2] = 1.0  # the first coordinate of each resonator carries the cosine
    return StateSpaceForm(F, torch.eye(D, dtype=dt, device=dev), torch.zeros(D, D, dtype=dt, device=dev), Pinf, H)


def _product(a: StateSpaceForm, b: StateSpaceForm) -> StateSpaceForm:
    Ia = torch.eye(a.F.shape[-1], dtype=a.F.dtype, device=a.F.device)
    Ib = torch.eye(b.F.shape[-1], dtype=b.F.dtype, device=b.F.device)
    F = torch.kron(a.F, Ib) + torch.kron(Ia, b.F)
    Pinf = torch.kron(a.Pinf, b.Pinf)
    # The product process is driven by whatever noise keeps Pinf stationary: L Qc L^T = -(F Pinf + Pinf F^T).
    Qc = -(F @ Pinf + Pinf @ F.mT)
    Qc = 0.5 * (Qc + Qc.mT)
    return StateSpaceForm(F, torch.eye(F.shape[-1], dtype=F.dtype, device=F.device), Qc, Pinf, torch.kron(a.H, b.H))


def _sum(a: StateSpaceForm, b: StateSpaceForm) -> StateSpaceForm:
    return StateSpaceForm(
        torch.block_diag(a.F, b.F),
        torch.block_diag(a.L, b.L),
        torch.block_diag(a.Qc, b.Qc),
        torch.block_diag(a.Pinf, b.Pinf),
        torch.cat([a.H, b.H], -1),
    )


def state_space(kernel: Kernel, num_harmonics: int = 7) -> StateSpaceForm:
    """The state-space form of a one-dimensional `vitorch.models.gp` kernel.

    Args:
        kernel: `Matern12`, `Matern32`, `Matern52`, `Periodic`, or a `Sum`, `Product`
            or `Scale` of those (scalar hyperparameters).
        num_harmonics: ``J``, harmonics kept for each `Periodic` factor (state ``2 J + 1``).

    Returns:
        A `StateSpaceForm` (``F [D, D]``, ``L [D, S]``, ``Qc [S, S]``, ``Pinf [D, D]``, ``H [1, D]``),
        differentiable in the kernel's hyperparameters.

    Raises:
        TypeError: for a kernel with no finite state-space form (``RBF``, ``RationalQuadratic``,
            ``Linear``), naming it.
        ValueError: for a per-dimension (ARD) hyperparameter, or ``num_harmonics < 0``.

    References:
        Hartikainen & Särkkä, *Kalman Filtering and Smoothing Solutions to Temporal Gaussian Process
        Regression Models* (MLSP 2010); Solin & Särkkä, *Explicit Link Between Periodic Covariance
        Functions and State Space Models* (AISTATS 2014).
    """
    if isinstance(num_harmonics, bool) or not isinstance(num_harmonics, int) or num_harmonics < 0:
        raise ValueError(f"state_space: num_harmonics must be a non-negative integer; got {num_harmonics!r}")
    if isinstance(kernel, (Matern12, Matern32, Matern52)):
        return _matern(kernel)
    if isinstance(kernel, Periodic):
        return _periodic(kernel, num_harmonics)
    if isinstance(kernel, Sum):
        return _sum(state_space(kernel.k1, num_harmonics), state_space(kernel.k2, num_harmonics))
    if isinstance(kernel, Product):
        return _product(state_space(kernel.k1, num_harmonics), state_space(kernel.k2, num_harmonics))
    if isinstance(kernel, Scale):
        inner = state_space(kernel.kernel, num_harmonics)
        c = _scalar("Scale", "variance", kernel.variance)
        return inner._replace(Qc=inner.Qc * c, Pinf=inner.Pinf * c)
    raise TypeError(
        f"state_space: {type(kernel).__name__} has no finite state-space form; use Matern12/32/52, Periodic, "
        "or sums, products and scalings of them (Matern52 is the usual stand-in for RBF)"
    )


def discretize(form: StateSpaceForm, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Transitions over the gaps ``dt [N]``: ``A = expm(F dt)`` and ``Q = Pinf - A Pinf A^T``, each ``[N, D, D]``.

    Equal gaps share one matrix exponential (a regular grid costs one), so the cost is
    ``O(#distinct gaps * D^3)`` plus an ``O(N D^2)`` gather.

    Raises:
        ValueError: if a gap is negative or not finite (times must be sorted).

    References:
        Särkkä & Solin, *Applied Stochastic Differential Equations* (CUP 2019), sec. 6.2 and ch. 12.
    """
    if dt.dim() != 1:
        raise ValueError(f"discretize: dt must be a vector [N]; got shape {tuple(dt.shape)}")
    if not bool((torch.isfinite(dt) & (dt >= 0)).all()):
        raise ValueError("discretize: time gaps must be finite and non-negative (sorted times)")
    uniq, inverse = torch.unique(dt, return_inverse=True)
    A = torch.linalg.matrix_exp(form.F * uniq[:, None, None])
    Q = form.Pinf - A @ form.Pinf @ A.mT
    Q = 0.5 * (Q + Q.mT)
    return A[inverse], Q[inverse]
