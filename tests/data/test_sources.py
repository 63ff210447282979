"""Fashion-MNIST from (synthetic and, when installed, real) IDX files; digits; binarization."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vitorch.data import FASHION_MNIST_DIR, ImageData, digits, fashion_mnist, write_idx

from conftest import Z


def _write_set(root, n_train=6, n_test=3, side=28, gz=True, n_labels=None):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{stem}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
        labels = rng.integers(0, 10, n if n_labels is None else n_labels, dtype=np.uint8)
        write_idx(root / f"{stem}-labels-idx1-ubyte{suffix}", labels)


@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_fashion_mnist(tmp_path, gz):
    _write_set(tmp_path, gz=gz)
    raw = fashion_mnist("train", root=tmp_path, binarize=None)
    assert len(raw) == 6 and raw.images.shape == (6, 784) and raw.labels.shape == (6,)
    assert raw.image_shape == (28, 28)
    assert float(raw.images.min()) >= 0 and float(raw.images.max()) <= 1
    test = fashion_mnist("test", root=tmp_path, binarize=None, flatten=False)
    assert test.images.shape == (3, 28, 28)
    fixed = fashion_mnist("train", root=tmp_path, binarize="fixed", threshold=0.3)
    assert torch.equal(fixed.images, (raw.images > 0.3).to(fixed.images.dtype))
    assert torch.equal(fixed[2], fixed[2])  # fixed binarization reads the same image every time


def test_missing_data_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        fashion_mnist("train", root=tmp_path)
    assert "root=" in str(err.value)


def test_wrong_image_dimensions(tmp_path):
    _write_set(tmp_path, side=12)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: IDX dimensions"):
        fashion_mnist("train", root=tmp_path)


def test_images_and_labels_disagree(tmp_path):
    _write_set(tmp_path, n_labels=5)
    with pytest.raises(ValueError, match="6 images but .* 5 labels"):
        fashion_mnist("train", root=tmp_path)


def test_truncated_real_layout(tmp_path):
    _write_set(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: IDX data truncated"):
        fashion_mnist("test", root=tmp_path)


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR),
    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_test_split():
    test = fashion_mnist("test", binarize=None)
    assert test.images.shape == (10000, 784)
    # The published test set is balanced: 1,000 images of each of the 10 classes.
    assert torch.equal(torch.bincount(test.labels, minlength=10), torch.full((10,), 1000))


def test_dynamic_binarization_is_bernoulli():
    p = torch.linspace(0, 1, 11)
    data = ImageData(p.reshape(1, 11).expand(4, 11).contiguous(), binarize="dynamic")
    n = 4000
    draws = torch.stack([data.tensor() for _ in range(n // 4)]).reshape(-1, 11)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    mean = draws.mean(0)
    assert mean[0] == 0 and mean[-1] == 1  # p = 0 and 1 are deterministic
    se = (p * (1 - p) / n).sqrt()
    # Z binomial standard errors per entry (entries 1..9 have p(1-p) >= 0.09).
    assert bool(((mean - p).abs()[1:-1] <= Z * se[1:-1]).all()), (mean, p)
    # ... and a fresh draw on every read.
    assert not torch.equal(data.tensor(), data.tensor())


def test_dataloader_batches_and_subset():
    train = digits("train", binarize="dynamic")
    batch = next(iter(DataLoader(train, batch_size=32, shuffle=True)))
    assert batch.shape == (32, 64)
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    small = train.subset(10)
    assert len(small) == 10 and small.labels.shape == (10,)
    with pytest.raises(ValueError, match="subset size"):
        train.subset(0)


def test_digits_split():
    train, test, every = digits("train", binarize=None), digits("test", binarize=None), digits("all", binarize=None)
    assert len(train) + len(test) == len(every) == 1797
    assert len(test) == round(0.2 * 1797)
    assert every.images.shape[1] == 64 and float(every.images.max()) == 1.0
    # The two splits are disjoint rows of the whole set: same multiset of (image, label) rows.
    joined = torch.cat([train.images, test.images])
    assert math.isclose(float(joined.sum()), float(every.images.sum()), rel_tol=1e-12)
    assert torch.equal(torch.bincount(torch.cat([train.labels, test.labels])), torch.bincount(every.labels))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(binarize="random"), "binarize must be one of"),
        (dict(threshold=1.0), "threshold must lie in"),
        (dict(images=torch.full((2, 3), 1.5)), "intensities in \\[0, 1\\]"),
        (dict(labels=torch.zeros(3)), "labels must be"),
        (dict(images=torch.zeros(4)), "images must be a \\[N, \\*shape\\]"),
    ],
)
def test_image_data_bad_input(kwargs, message):
    args = dict(images=torch.rand(2, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ImageData(**args)


def test_bad_split_names():
    with pytest.raises(ValueError, match="split must be"):
        fashion_mnist("validation")
    with pytest.raises(ValueError, match="split must be"):
        digits("valid")
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=1.0)


def test_test_split_is_binarized_once_and_training_split_dynamically():
    # A test set must be the same binary set at every evaluation (vt.fit's eval_data, vae.evaluate);
    # training data is redrawn per read (Burda et al., 2016).
    test, train = digits("test"), digits("train")
    assert test.binarize == "once" and train.binarize == "dynamic"
    first = torch.stack([test[i] for i in range(len(test))])
    again = torch.stack([test[i] for i in range(len(test))])
    assert torch.equal(first, again) and set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(test.tensor(), first)
    # One Bernoulli draw from the intensities, not a threshold: another seed draws another set, and
    # over the grey pixels the share of ones matches the mean intensity within Z standard errors.
    p = digits("test", binarize=None).images
    other = ImageData(p, binarize="once", seed=1).images
    assert not torch.equal(other, first)
    grey = (p > 0.1) & (p < 0.9)
    se = float((p[grey] * (1 - p[grey])).sum().sqrt() / grey.sum())
    assert abs(float(first[grey].mean() - p[grey].mean())) < Z * se
