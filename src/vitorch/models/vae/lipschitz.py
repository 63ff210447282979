"""An inverse-Lipschitz decoder: a VAE whose decoder cannot ignore a latent direction.

Kinoshita et al. (2023) control posterior collapse by making the decoder ``f``
``L``-inverse Lipschitz, ``||f(z) - f(z')|| >= L ||z - z'||``: no latent direction can
leave the output unchanged, and they bound the posterior's departure from the prior from
below by a quantity growing with ``L^2``.  Their decoder composes Brenier maps (gradients
of strongly convex potentials built from input-convex networks) with an injective linear
embedding of the latent space into the data space.  This module builds it as

    f(z) = T_2(B T_1(z)) + c,     T_i(u) = m u + W_i^T (v_i * sigmoid(W_i u + b_i)),   m = sqrt(L),

where ``T_i`` is the gradient of the strongly convex potential
``psi_i(u) = m ||u||^2 / 2 + sum_j v_ij softplus(w_ij . u + b_ij)`` (a one-hidden-layer
input-convex network, ``v_i >= 0`` through a softplus), so ``T_i`` is ``m``-strongly
monotone and hence ``m``-inverse Lipschitz; ``B [O, D]`` has orthonormal columns (a fixed
random isometric embedding, inverse Lipschitz with constant 1); the composition is
``m * 1 * m = L``-inverse Lipschitz.  ``L = 0`` leaves the monotone gradient maps
unconstrained (they may then flatten a direction), the baseline against which the
constraint is measured.

Differences from the paper: one hidden layer per potential, written with its gradient in
closed form (no double backward) instead of a deep ICNN differentiated by autograd; a fixed
rather than learned isometric embedding.

References:
    Kinoshita, Oono, Fukumizu, Yoshida & Maeda, *Controlling Posterior Collapse by an
    Inverse Lipschitz Constraint on the Decoder Network* (ICML 2023); Amos, Xu & Kolter,
    *Input Convex Neural Networks* (ICML 2017); Wang, Blei & Cunningham, *Posterior Collapse
    and Latent Variable Non-identifiability* (NeurIPS 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MonotoneGradientMap", "InverseLipschitzDecoder"]


class MonotoneGradientMap(nn.Module):
    """``T(u) = m u + W^T (softplus(v) * sigmoid(W u + b))``: the gradient of a ``m``-strongly convex potential.

    Args:
        dim: ``n``, the input and output width.
        hidden: ``H``, the potential's hidden units.
        strength: ``m >= 0``; ``T`` is ``m``-inverse Lipschitz (strongly monotone).

    Shapes: ``[*S, n] -> [*S, n]``.

    References:
        Amos, Xu & Kolter (ICML 2017); Kinoshita et al. (ICML 2023), section 4.
    """

    def __init__(self, dim: int, hidden: int, strength: float):
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.raw_v = nn.Parameter(torch.full((hidden,), math.log(math.e - 1)))  # softplus(raw) = 1
        self.strength = float(strength)

    def forward(self, u: Tensor) -> Tensor:
        gate = torch.sigmoid(self.inner(u)) * F.softplus(self.raw_v)
        return self.strength * u + gate @ self.inner.weight


class InverseLipschitzDecoder(nn.Module):
    """``z [*S, D] -> params [*S, *event]`` that is ``lipschitz``-inverse Lipschitz (module notes).

    Args:
        latent_dim: ``D``.
        event_shape: the shape of one datum (``O = prod(event_shape) >= D``).
        lipschitz: ``L >= 0``, the inverse Lipschitz constant.
        hidden: the hidden units ``(H_1, H_2)`` of the latent-space and data-space maps.

    Raises:
        ValueError: for ``L < 0``, ``O < D`` or bad sizes.

    References:
        Kinoshita, Oono, Fukumizu, Yoshida & Maeda (ICML 2023).
    """

    def __init__(
        self, latent_dim: int, event_shape: Sequence[int], lipschitz: float = 1.0, hidden: Sequence[int] = (200, 200)
    ):
        super().__init__()
        self.event_shape = tuple(event_shape)
        out = math.prod(self.event_shape)
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1 or out < latent_dim:
            raise ValueError(f"need an integer latent_dim in [1, prod(event_shape) = {out}]; got {latent_dim!r}")
        if not 0.0 <= lipschitz < math.inf:
            raise ValueError(f"lipschitz must be finite and >= 0; got {lipschitz!r}")
        if len(hidden) != 2 or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be two integers >= 1; got {hidden!r}")
        m = math.sqrt(lipschitz)
        self.lipschitz = float(lipschitz)
        self.latent_map = MonotoneGradientMap(latent_dim, hidden[0], m)
        self.data_map = MonotoneGradientMap(out, hidden[1], m)
        g = torch.Generator().manual_seed(0)  # the embedding is fixed, not learned: the same for every seed
        basis, _ = torch.linalg.qr(torch.randn(out, latent_dim, generator=g))
        self.register_buffer("embedding", basis)  # [O, D], orthonormal columns
        self.bias = nn.Parameter(torch.zeros(out))

    def forward(self, z: Tensor) -> Tensor:
        u = self.latent_map(z) @ self.embedding.mT
        out = self.data_map(u) + self.bias
        return out.reshape(*z.shape[:-1], *self.event_shape)
