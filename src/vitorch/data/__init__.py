"""Data for the zoos: a strict IDX reader, Fashion-MNIST and scikit-learn's digits.

Example:
    >>> train = vitorch.data.fashion_mnist("train", binarize="dynamic")   # needs dataset-fashion-mnist
    >>> train = vitorch.data.digits("train")                             # no install needed
    >>> loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
"""

from .idx import read_idx, write_idx
from .images import BINARIZE, ImageData
from .sources import FASHION_MNIST_DIR, digits, fashion_mnist

__all__ = ["read_idx", "write_idx", "ImageData", "BINARIZE", "fashion_mnist", "digits", "FASHION_MNIST_DIR"]
