"""Image data sets for VAEs: intensities in ``[0, 1]`` with optional binarization.

``binarize`` chooses what a model sees:

* ``None``: the grey-level intensities (for Gaussian or categorical decoders);
* ``"dynamic"``: a fresh Bernoulli draw ``x ~ Bernoulli(intensity)`` every time an
  image is read, the usual regulariser for Bernoulli VAEs (Burda et al., 2016);
* ``"once"``: one Bernoulli draw ``x ~ Bernoulli(intensity)`` made when the set is built
  (seeded by ``seed``), then fixed: the stochastically binarized test set on which test
  log-likelihoods are reported (Salakhutdinov & Murray, 2008), the same at every evaluation;
* ``"fixed"``: thresholded once, ``x = 1[intensity > threshold]``, so every epoch
  and every model sees the same binary images (the set-up of the benchmark).

The data sources (`vitorch.data.digits`, `vitorch.data.fashion_mnist`) default to
``"dynamic"`` for training splits and ``"once"`` for the test split, so a test set passed to
``vt.fit(eval_data=...)`` or to an evaluation is the same binary set every time.

`ImageData.tensor` gives one fixed copy of the whole set, which is what a
test log-likelihood should be measured on (a dynamically binarized test set would
change with every evaluation).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageData", "BINARIZE"]

BINARIZE = (None, "dynamic", "once", "fixed")


class ImageData(Dataset):
    """Images (and labels) in memory, binarized on the fly or once.

    Args:
        images: ``[N, *shape]`` intensities in ``[0, 1]`` (``uint8`` is divided by 255).
        labels: ``[N]`` integer labels, or ``None``.
        binarize: ``None``, ``"dynamic"``, ``"once"`` or ``"fixed"`` (see the module notes).
        threshold: the cut for ``"fixed"`` binarization.
        seed: the seed of the one draw of ``"once"`` binarization.
        flatten: store each image as a ``[prod(shape)]`` vector (for MLPs).
        dtype: floating dtype of the returned images (default: torch's default).

    Indexing returns the image only; the labels are `labels`.  ``__getitems__``
    lets a ``DataLoader`` fetch (and binarize) a whole batch in one call.

    References:
        Salakhutdinov & Murray, *On the Quantitative Analysis of Deep Belief Networks* (ICML 2008):
        stochastically binarized MNIST.
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016): dynamic binarization.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        binarize: str | None = None,
        threshold: float = 0.5,
        flatten: bool = True,
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ):
        if binarize not in BINARIZE:
            raise ValueError(f"binarize must be one of {BINARIZE}; got {binarize!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1); got {threshold!r}")
        if not isinstance(images, Tensor) or images.dim() < 2 or images.shape[0] < 1:
            raise ValueError(f"images must be a [N, *shape] tensor with N >= 1; got {getattr(images, 'shape', images)}")
        if labels is not None and labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be [N] = [{images.shape[0]}]; got {tuple(labels.shape)}")
        dtype = dtype or torch.get_default_dtype()
        x = images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)
        if not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError("images must hold intensities in [0, 1] (or uint8 values 0..255)")
        self.image_shape = tuple(images.shape[1:])
        if flatten:
            x = x.reshape(x.shape[0], -1)
        if binarize == "fixed":
            x = (x > threshold).to(dtype)
        elif binarize == "once":
            x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
        self.images = x.contiguous()
        self.labels = labels
        self.binarize = binarize
        self.threshold = threshold

    def __len__(self) -> int:
        return self.images.shape[0]

    def _read(self, index) -> Tensor:
        x = self.images[index]
        return torch.bernoulli(x) if self.binarize == "dynamic" else x

    def __getitem__(self, index: int) -> Tensor:
        return self._read(index)

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        # One gather and one Bernoulli draw per batch instead of one per image.
        return list(self._read(torch.as_tensor(indices)).unbind(0))

    @property
    def dim(self) -> int:
        """Size of one (flattened) image."""
        return self.images[0].numel()

    def tensor(self, generator: torch.Generator | None = None) -> Tensor:
        """The whole set as one tensor; a dynamically binarized set is drawn once (seed it with ``generator``)."""
        if self.binarize == "dynamic":
            return torch.bernoulli(self.images, generator=generator)
        return self.images

    def subset(self, n: int) -> ImageData:
        """The first ``n`` images (same binarization)."""
        if not 1 <= n <= len(self):
            raise ValueError(f"subset size must lie in [1, {len(self)}]; got {n}")
        new = ImageData.__new__(ImageData)
        new.__dict__.update(self.__dict__)
        new.images = self.images[:n]
        new.labels = None if self.labels is None else self.labels[:n]
        return new
