"""Where the images come from: Fashion-MNIST (Debian package or a path) and scikit-learn's digits."""

from __future__ import annotations

import os

import torch

from .idx import read_idx
from .images import ImageData

__all__ = ["fashion_mnist", "digits", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}


def _auto(binarize: str | None, split: str) -> str | None:
    """``"auto"``: a fresh draw per read for training, one seeded draw for the test split."""
    if binarize != "auto":
        return binarize
    return "once" if split == "test" else "dynamic"


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the data with "
        "`sudo apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist/), "
        "or pass root=<directory holding the IDX files>."
    )


def fashion_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    binarize: str | None = "auto",
    threshold: float = 0.5,
    flatten: bool = True,
    dtype: torch.dtype | None = None,
) -> ImageData:
    """Fashion-MNIST (28x28 grey clothing images, 10 classes) read from its IDX files.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: directory with the (gzipped) IDX files; default the Debian package's
            `FASHION_MNIST_DIR`.
        binarize: ``None``, ``"dynamic"``, ``"once"`` or ``"fixed"`` (see `vitorch.data.ImageData`);
            ``"auto"`` (the default) is ``"dynamic"`` for training data and ``"once"`` for the
            test split, so evaluations see one fixed binary test set.
        threshold: the cut for ``"fixed"`` binarization.
        flatten: return each image as a vector (for MLPs).
        dtype: floating dtype of the images (default: torch's default).

    Raises:
        FileNotFoundError: telling how to install the data when a file is missing.
        ValueError: naming the file if its header, dimensions or length are wrong,
            or if the images and labels disagree in number.

    References:
        Xiao, Rasul & Vollgraf, Fashion-MNIST (2017).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    root = os.fspath(root) if root is not None else FASHION_MNIST_DIR
    image_stem, label_stem, _ = _FILES[split]
    image_path, label_path = _find(root, image_stem), _find(root, label_stem)
    images = read_idx(image_path, expected_shape=(None, 28, 28))
    labels = read_idx(label_path, expected_shape=(None,))
    if images.dtype != torch.uint8 or labels.dtype != torch.uint8:
        raise ValueError(f"{image_path} / {label_path}: Fashion-MNIST files must hold unsigned bytes")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels")
    return ImageData(
        images, labels.long(), binarize=_auto(binarize, split), threshold=threshold, flatten=flatten, dtype=dtype
    )


def digits(
    split: str = "train",
    binarize: str | None = "auto",
    threshold: float = 0.5,
    flatten: bool = True,
    test_fraction: float = 0.2,
    dtype: torch.dtype | None = None,
) -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): no download, for quick starts and tests.

    Intensities 0..16 are scaled to ``[0, 1]``.  The split is a fixed permutation
    (seed 0), the last ``test_fraction`` of it being the test set.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        binarize: ``None``, ``"dynamic"``, ``"once"`` or ``"fixed"`` (see `vitorch.data.ImageData`);
            ``"auto"`` (the default) is ``"dynamic"`` for training data and ``"once"`` for the
            test split, so evaluations see one fixed binary test set.
        threshold: the cut for ``"fixed"`` binarization.
        flatten: return each image as a vector (for MLPs).
        dtype: floating dtype of the images (default: torch's default).
        test_fraction: share of the images held out, in ``(0, 1)``.

    Shapes: images ``[N, 64]`` (the default, ``flatten=True``) or ``[N, 8, 8]``; labels ``[N]``.

    References:
        Alpaydin & Kaynak, *Optical Recognition of Handwritten Digits* (UCI Machine Learning Repository,
        1998).
        Pedregosa et al., *Scikit-learn: Machine Learning in Python* (JMLR 2011): ``load_digits``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all'; got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction!r}")
    from sklearn.datasets import load_digits  # optional dependency, imported only here

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float64) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    n_test = int(round(test_fraction * images.shape[0]))
    if split == "train":
        order = order[: images.shape[0] - n_test]
    elif split == "test":
        order = order[images.shape[0] - n_test :]
    return ImageData(
        images[order], labels[order], binarize=_auto(binarize, split), threshold=threshold, flatten=flatten, dtype=dtype
    )
