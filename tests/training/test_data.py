"""Real offline data sets (digits, MNIST-5k), Fashion-MNIST through torchvision's loader on tiny IDX files written
here (uncompressed, train and t10k), the data set chosen for a model's input shape, and the progress bar's
on/off rules (off under CI and when the stream is not a terminal)."""

import io
import struct

import numpy as np
import pytest
import torch
from conftest import write_idx
from torch import nn

from bncheck.core.errors import BNCheckUsageError
from bncheck.data import (
    FASHION_FILES,
    Data,
    digits,
    fashion_mnist,
    for_input_shape,
    mnist5k,
    model_device,
)
from bncheck.training.convergence import compare_convergence
from bncheck.training.progress import progress_bar, progress_enabled


@pytest.fixture(scope="module")
def d8():
    return digits()


@pytest.fixture(scope="module")
def m5k():
    return mnist5k()


def _balanced(y: torch.Tensor, per_class: int) -> bool:
    return torch.bincount(y, minlength=10).tolist() == [per_class] * 10


# --- digits, MNIST-5k ------------------------------------------------------------------------------------------------


def test_digits_split_shapes_and_standardization(d8):
    assert d8.x_train.shape == (1437 + 1, 1, 8, 8) and d8.x_test.shape == (359, 1, 8, 8)
    assert d8.num_classes == 10 and d8.sample_shape == (1, 8, 8) and d8.name == "digits"
    assert d8.x_train.dtype == torch.float32 and d8.y_train.dtype == torch.int64
    assert abs(float(d8.x_train.mean())) < 1e-5 and float(d8.x_train.std()) == pytest.approx(1, abs=1e-4)
    counts = torch.bincount(d8.y_test, minlength=10)
    assert int(counts.min()) >= 34 and int(counts.max()) <= 38  # stratified: 20 % of each class
    assert repr(d8) == "Data('digits': train (1438, 1, 8, 8), test (359, 1, 8, 8), 10 classes, on cpu)"


def test_digits_split_is_seeded(d8):
    again, other = digits(), digits(seed=1)
    assert torch.equal(again.x_train, d8.x_train) and torch.equal(again.y_test, d8.y_test)
    assert not torch.equal(other.y_train, d8.y_train)


def test_digits_are_the_real_images(d8):
    """The sklearn images, rescaled: integer grey levels 0..16 map back exactly."""
    from sklearn.datasets import load_digits

    raw = load_digits().images.astype(np.float32)
    levels = torch.cat([d8.x_train, d8.x_test]).flatten(1)
    lo = levels.min()
    step = float(torch.unique(levels)[1] - lo)
    restored = ((levels - lo) / step).round()
    assert restored.max() == 16 and sorted(restored.sum(1).tolist()) == sorted(raw.reshape(len(raw), -1).sum(1))


def test_digits_resized_and_flat():
    assert digits(image_size=28).sample_shape == (1, 28, 28)
    assert digits(flat=True).sample_shape == (64,)
    assert digits(image_size=16, flat=True).sample_shape == (256,)


def test_mnist5k(m5k):
    assert m5k.x_train.shape == (4000, 1, 28, 28) and m5k.x_test.shape == (1000, 1, 28, 28)
    assert _balanced(m5k.y_test, 100) and _balanced(m5k.y_train, 400)
    assert mnist5k(flat=True).sample_shape == (784,)


def test_subset_to_and_reshaped(d8):
    small = d8.subset(100, 20)
    assert len(small.x_train) == len(small.y_train) == 100 and len(small.x_test) == 20
    assert d8.to("cpu").x_train is d8.x_train
    flat = d8.reshaped((64,))
    assert flat.name == "digits as 64" and torch.equal(flat.x_train, d8.x_train.flatten(1))
    rgb = d8.reshaped((3, 8, 8))
    assert rgb.sample_shape == (3, 8, 8) and torch.equal(rgb.x_train[:, 0], rgb.x_train[:, 2])


def test_model_device():
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2), "meta") == torch.device("meta")


# --- Fashion-MNIST on tiny IDX files ---------------------------------------------------------------------------------


def _write_fashion(root, n_train=20, n_test=10, *, skip=(), truncate=None):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        if name in skip:
            continue
        write_idx(raw / name, array)
        if name == truncate:
            (raw / name).write_bytes((raw / name).read_bytes()[:-5])
    return arrays


def test_write_idx_format(tmp_path):
    write_idx(tmp_path / "x", np.arange(6, dtype=np.uint8).reshape(2, 3))
    data = (tmp_path / "x").read_bytes()
    assert data[:4] == b"\x00\x00\x08\x02" and struct.unpack(">II", data[4:12]) == (2, 3)
    assert data[12:] == bytes(range(6))


def test_fashion_mnist_reads_uncompressed_idx_files_through_torchvision(tmp_path):
    arrays = _write_fashion(tmp_path)
    data = fashion_mnist(tmp_path)
    assert data.name == "Fashion-MNIST" and data.num_classes == 10
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train = arrays["train-images-idx3-ubyte"].astype(np.float32) / 255
    mean, std = train.mean(), torch.from_numpy(train).std()
    expected = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255) - mean) / std
    torch.testing.assert_close(data.x_test[:, 0], expected)  # standardized with the training split's mean and std
    limited = fashion_mnist(tmp_path, train_limit=5, test_limit=3)
    assert len(limited.x_train) == 5 and len(limited.y_test) == 3


def test_fashion_mnist_missing_files_never_download(tmp_path):
    _write_fashion(tmp_path, skip=("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    with pytest.raises(BNCheckUsageError) as info:
        fashion_mnist(tmp_path)
    message = str(info.value)
    assert "missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message and "never downloads" in message
    assert "\n" not in message
    with pytest.raises(BNCheckUsageError, match="missing " + ", ".join(FASHION_FILES)):
        fashion_mnist(tmp_path / "elsewhere")


def test_fashion_mnist_malformed_file(tmp_path):
    _write_fashion(tmp_path, truncate="train-images-idx3-ubyte")
    with pytest.raises(BNCheckUsageError, match="could not be read"):
        fashion_mnist(tmp_path)


# --- the data set for a model's input shape --------------------------------------------------------------------------


@pytest.mark.parametrize("shape, name, n_train", [
    ((1, 8, 8), "digits", 1438),
    ((64,), "digits as 64", 1438),
    ((1, 28, 28), "MNIST-5k", 4000),
    ((784,), "MNIST-5k as 784", 4000),
    ((3, 32, 32), "MNIST-5k as 3x32x32", 4000),
    ((100,), "MNIST-5k as 100", 4000),
])
def test_for_input_shape_builtin(shape, name, n_train):
    data = for_input_shape(shape)
    assert data.sample_shape == shape and data.name == name and len(data.x_train) == n_train


def test_for_input_shape_with_a_data_root(tmp_path):
    _write_fashion(tmp_path)
    assert for_input_shape((1, 28, 28), data_root=tmp_path).name == "Fashion-MNIST"
    assert for_input_shape((3, 16, 16), data_root=tmp_path).sample_shape == (3, 16, 16)


@pytest.mark.parametrize("shape, fragment", [
    ((3,), "input shape (3,): a (features,) input takes flattened square images"),
    ((1, 2, 8, 8), "fit (features,) or (C, H, W) inputs"),
    ((0, 8, 8), "fit (features,) or (C, H, W) inputs"),
    ((3, 512, 512), "GiB"),
])
def test_for_input_shape_that_nothing_fits(shape, fragment):
    with pytest.raises(BNCheckUsageError) as info:
        for_input_shape(shape)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# --- progress bar ----------------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("ci, stream, expected", [
    (None, Terminal(), True),
    ("true", Terminal(), False),  # CI: off even on a terminal
    ("1", Terminal(), False),
    ("false", Terminal(), True),  # an explicit "false" is no CI
    (None, io.StringIO(), False),  # a pipe or file
])
def test_progress_enabled_rules(monkeypatch, ci, stream, expected):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert progress_enabled(stream=stream) is expected
    assert progress_enabled(True, stream) is True and progress_enabled(False, stream) is False


def test_progress_bar_draws_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    term = Terminal()
    with progress_bar(10, "training", stream=term) as bar:
        bar.update(5)
        bar.set_postfix_str("acc 0.5")
    assert "training" in term.getvalue() and "5/10" in term.getvalue()
    pipe = io.StringIO()
    with progress_bar(10, "training", stream=pipe) as bar:
        bar.update(5)
    assert pipe.getvalue() == "" and bar.disable


def test_training_draws_no_bar_under_pytest_and_one_when_asked(d8, capsys):
    """Under pytest stderr is captured (not a terminal): no bar; progress=True forces one."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    compare_convergence(model, d8, seeds=1, steps=10)
    assert capsys.readouterr().err == ""
    compare_convergence(model, d8, seeds=1, steps=10, progress=True)
    assert "BN vs no BN" in capsys.readouterr().err


def test_data_is_a_plain_dataclass():
    x = torch.zeros(4, 2)
    y = torch.zeros(4, dtype=torch.long)
    data = Data("tiny", x, y, x, y, num_classes=2)
    assert data.sample_shape == (2,) and data.device == torch.device("cpu")
