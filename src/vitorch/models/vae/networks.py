"""Decoders and shared layers: small MLP and convolutional networks (encoders: `encoders.py`).

An *encoder* is any module ``x [B, *event] -> family`` with batch shape ``[B]``
and event ``[D]`` (a `vitorch.DiagNormal`, a `vitorch.Flow`, ...).
A *decoder* is any module ``z [*S, D] -> params [*S, *event(, P)]``, where ``P``
is the likelihood's ``params_per_entry`` and is dropped when it is 1.

Families are built with ``validate_args=False``: the networks produce valid
parameters by construction (softplus scales), and checks in the training hot path
cost time every step.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014) (MLP encoder/decoder).
    Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow
    (2016) (the IAF posterior: a Gaussian from the encoder, then IAF steps reading
    the encoder's features as context).
    Naesseth et al., Reparameterization Gradients through Acceptance-Rejection
    Sampling Algorithms (2017) (the RSVI Dirichlet posterior).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ...kernels import bernoulli_linear_log_prob, tanh

__all__ = [
    "Tanh",
    "mlp",
    "MLPDecoder",
    "ConvFeatures",
    "ConvDecoder",
]


class Tanh(nn.Module):
    """``nn.Tanh`` through `vitorch.kernels.tanh` (its dispatcher may pick the fused backend); any shape.

    The default hidden activation of the zoo's networks.  On large inputs the kernel's
    fused backend computes ``2 sigmoid(2x) - 1`` (torch's cheaper sigmoid kernel; a few
    ulps of 1 from ``torch.tanh``); pass ``activation=nn.Tanh`` for torch's own.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016),
        section 5 (tanh hidden units).
    """

    def forward(self, x: Tensor) -> Tensor:
        return tanh(x)


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, activation: type[nn.Module] = Tanh
) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear``; the plain multilayer perceptron of the VAE papers.

    Args:
        in_features: input width.
        hidden: hidden widths, in order.
        out_features: output width.
        activation: hidden activation class (tanh, as in the papers; the default
            `vitorch.models.vae.Tanh` calls `vitorch.kernels.tanh`).

    Returns:
        An ``nn.Sequential`` mapping ``[..., in_features]`` to ``[..., out_features]``.

    References:
        Kingma & Welling (2014), appendix C; Burda, Grosse & Salakhutdinov (2016),
        section 5 (the 784-200-200-50 architecture with tanh units).
    """
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}")


class MLPDecoder(nn.Module):
    """``z [*S, D] -> params [*S, *event_shape(, P)]`` through an MLP.

    With a Bernoulli likelihood a `vitorch.models.vae.VAE` scores data through
    `bernoulli_log_prob`, which hands the output layer's weight and bias to one
    kernel call instead of calling that layer as a module (see there).

    Args:
        latent_dim: ``D``.
        event_shape: the shape of one datum, e.g. ``(784,)``.
        hidden: hidden widths.
        params_per_entry: ``P`` outputs per data entry (the likelihood's).
        activation: hidden activation class.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), appendix C.
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        hidden: Sequence[int] = (200, 200),
        params_per_entry: int = 1,
        activation: type[nn.Module] = Tanh,
    ):
        super().__init__()
        self.event_shape = tuple(event_shape)
        _check_sizes(latent_dim=latent_dim, params_per_entry=params_per_entry, **{"event size": math.prod(event_shape)})
        self.out_shape = self.event_shape + ((params_per_entry,) if params_per_entry > 1 else ())
        self.net = mlp(latent_dim, hidden, math.prod(self.out_shape), activation)
        self._flat = len(self.out_shape) == 1

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z)
        return out if self._flat else out.reshape(*z.shape[:-1], *self.out_shape)

    @property
    def output(self) -> nn.Module:
        """The last layer (an ``nn.Linear`` to ``prod(event_shape) * P`` outputs)."""
        return self.net[-1]

    def hidden(self, z: Tensor) -> Tensor:
        """``z [*S, D] -> [*S, H]``: every layer but the last (what `output` reads)."""
        last = len(self.net) - 1
        for i, layer in enumerate(self.net):
            if i == last:
                break
            z = layer(z)
        return z

    def bernoulli_log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """``log p(x | z)`` of a Bernoulli likelihood on this decoder's logits: ``[*S, B, D], [B, *event] -> [*S, B]``.

        Equal (to rounding) to ``Bernoulli().log_prob(self(z), x)``, computed as
        ``vitorch.kernels.bernoulli_linear_log_prob(self.hidden(z), W, b, x)`` with the
        output layer's weight ``W`` and bias ``b``, so the kernel may fuse the last matrix
        product with the density.  The output layer is read, not called: forward hooks
        registered on this decoder or on `output` do not run here (hooks on the
        hidden layers do).  A subclass of ``MLPDecoder`` or of ``Bernoulli`` makes
        `vitorch.models.vae.VAE` take ``likelihood.log_prob(decoder(z), x)`` instead.

        References:
            Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1.
        """
        out = self.output
        return bernoulli_linear_log_prob(self.hidden(z), out.weight, out.bias, x.reshape(x.shape[0], -1))


class ConvFeatures(nn.Module):
    """``x [B, C, H, W]`` (or flattened ``[B, C*H*W]``) ``-> [B, features]``: two stride-2 convolutions.

    ``H`` and ``W`` must be multiples of 4 (28x28 Fashion-MNIST, 8x8 digits).

    Args:
        image_shape: ``(C, H, W)``.
        features: output width ``F``.
        channels: the two convolutions' channel counts.

    References:
        Radford, Metz & Chintala, *Unsupervised Representation Learning with Deep
        Convolutional Generative Adversarial Networks* (2016) (stride-2 convolutions
        in place of pooling).
    """

    def __init__(self, image_shape: Sequence[int], features: int = 256, channels: Sequence[int] = (32, 64)):
        super().__init__()
        c, h, w = _image_shape(image_shape)
        c1, c2 = channels
        self.image_shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), features),
            nn.ReLU(),
        )
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], *self.image_shape))


class ConvDecoder(nn.Module):
    """``z [*S, D] -> params [*S, *event_shape(, P)]`` through two stride-2 transposed convolutions.

    Args:
        latent_dim: ``D``.
        image_shape: ``(C, H, W)`` with ``H, W`` multiples of 4.
        params_per_entry: ``P`` outputs per pixel.
        event_shape: the data's event shape (default ``image_shape``; ``(C*H*W,)``
            for flattened data).
        channels: the two hidden channel counts.

    References:
        Radford, Metz & Chintala, *Unsupervised Representation Learning with Deep
        Convolutional Generative Adversarial Networks* (2016) (stride-2 transposed
        convolutions).
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        params_per_entry: int = 1,
        event_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (64, 32),
    ):
        super().__init__()
        c, h, w = _image_shape(image_shape)
        _check_sizes(latent_dim=latent_dim, params_per_entry=params_per_entry)
        c1, c2 = channels
        self.start = (c1, h // 4, w // 4)
        self.params_per_entry = params_per_entry
        self.event_shape = tuple(event_shape) if event_shape is not None else (c, h, w)
        if math.prod(self.event_shape) != c * h * w:
            raise ValueError(f"event_shape {self.event_shape} does not hold {c * h * w} = C*H*W entries")
        self.fc = nn.Sequential(nn.Linear(latent_dim, c1 * (h // 4) * (w // 4)), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c * params_per_entry, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        out = self.net(self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start))  # [N, C*P, H, W]
        p = self.params_per_entry
        if p > 1:
            n, cp, h, w = out.shape
            out = out.reshape(n, cp // p, p, h, w).permute(0, 1, 3, 4, 2)  # entries first, P last
            return out.reshape(*lead, *self.event_shape, p)
        return out.reshape(*lead, *self.event_shape)


def _image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or any(s < 1 for s in shape) or shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"image_shape must be (C, H, W) with H and W multiples of 4; got {shape}")
    return shape
