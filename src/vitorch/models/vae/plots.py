"""PNG grids of images (reconstructions, samples), drawn on a bare matplotlib ``Figure`` (Agg)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["image_grid", "save_image_grid"]


def image_grid(images: Tensor, image_shape: Sequence[int], nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile ``images [N, *]`` (each reshaped to ``(H, W)`` or ``(1, H, W)``) into one ``[rows*(H+pad), nrow*(W+pad)]``.

    Args:
        images: ``[N, *]`` values in ``[0, 1]`` (clamped), ``H * W`` per image.
        image_shape: ``(H, W)`` or ``(1, H, W)``.
        nrow: images per row (default about ``sqrt(N)``).
        pad: white pixels between images.

    Returns:
        The grid, a ``[rows * (H + pad) + pad, nrow * (W + pad) + pad]`` float tensor.

    Raises:
        ValueError: if an image does not hold ``H * W`` values.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), figure 5 (samples
        shown as a grid of decoded images).
    """
    shape = tuple(image_shape)
    h, w = shape[-2:]
    if math.prod(shape) != h * w or images.shape[0] < 1 or images[0].numel() != h * w:
        raise ValueError(f"images {tuple(images.shape)} cannot be shown as single-channel {shape} images")
    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(rows * (h + pad) + pad, nrow * (w + pad) + pad)
    imgs = images.detach().reshape(n, h, w).float().cpu().clamp(0, 1)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = imgs[i]
    return grid


def save_image_grid(
    path: str, images: Tensor, image_shape: Sequence[int], nrow: int | None = None, title: str | None = None
) -> str:
    """Write `image_grid` as a grey-scale PNG at ``path`` (directories are created).

    Args:
        path: the PNG file.
        images: ``[N, *]`` values in ``[0, 1]``, ``H * W`` per image.
        image_shape: ``(H, W)`` or ``(1, H, W)``.
        nrow: images per row.
        title: an optional title above the grid.

    Returns:
        ``path``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), figure 5.
    """
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    grid = image_grid(images, image_shape, nrow)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # At least ~600 px across whatever the image size (8x8 digits make a grid of ~80 pixels), and
    # at least 2.5 screen pixels per image pixel, so a grid is readable at its saved size.
    scale = max(2.5, 600 / grid.shape[1])  # screen pixels per image pixel
    fig = Figure(figsize=(grid.shape[1] * scale / 100 + 0.5, grid.shape[0] * scale / 100 + 0.5))
    ax = fig.add_subplot()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
