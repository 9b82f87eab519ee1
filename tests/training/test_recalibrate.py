"""recalibrate: each BN layer's running statistics set to the population statistics of its input (precise BN),
repairing drifted statistics so that assert_population_stats passes, and changing nothing else of the model."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bncheck import recalibrate
from bncheck.core.errors import BNCheckError, BNCheckUsageError
from bncheck.core.state import Snapshot
from bncheck.core.threads import one_thread
from bncheck.data import Data
from bncheck.training.fit import fit
from bncheck.training.population import assert_population_stats, population_stats

pytestmark = pytest.mark.usefixtures("one_thread")

EXACT = {"mean_tol": 1e-5, "var_ratio": 1 + 1e-5, "quantile": 1.0}  # every channel, to float32 rounding
STATISTICS = {f"{layer}.{q}" for layer in ("3", "10") for q in ("running_mean", "running_var", "num_batches_tracked")}


def digits_cnn():
    """The seed CNN's design at 8x8 (as in test_population.py)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(6),
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(48, 120), nn.ReLU(), nn.BatchNorm1d(120), nn.Linear(120, 60), nn.ReLU(), nn.Linear(60, 10))


@pytest.fixture(scope="module")
def trained(d8):
    with one_thread(), torch.random.fork_rng():
        torch.manual_seed(0)
        net, _ = fit(digits_cnn(), d8, lr=0.003, steps=100, stop_at_target=False)
    return net.eval()


@pytest.fixture
def surgery(trained):
    """The trained CNN with its first conv's output doubled: both BN layers' statistics are stale."""
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model[0].weight.mul_(2)
        model[0].bias.mul_(2)
    return model


@pytest.mark.parametrize("train", [False, True])
def test_recalibrate_sets_the_exact_population_statistics_and_nothing_else(surgery, d8, train):
    model = surgery.train(train)
    with pytest.raises(BNCheckError, match="stale running statistics"):
        assert_population_stats(model, d8)
    before = Snapshot.of(model)
    stats = recalibrate(model, d8)
    assert list(stats) == ["3", "10"]
    assert {line.split("'")[1] for line in before.differences(model)} == STATISTICS  # modes, weights: as they were
    assert all(m.training == train for m in model.modules())
    assert int(model[3].num_batches_tracked) == int(model[10].num_batches_tracked) == 2  # 1438 samples by 1000
    assert_population_stats(model, d8, **EXACT)
    for name, pop in population_stats(model, d8).items():  # the same passes: the same float64 numbers
        assert torch.equal(stats[name].mean, pop.mean) and torch.equal(stats[name].var, pop.var)


def test_recalibrate_in_one_train_mode_pass_repairs_fine_tuning_drift(trained, d8):
    """Fine-tuning with BN in eval mode on inverted images leaves stale statistics; fvcore's one pass in train mode
    over a shuffling DataLoader repairs them within assert_population_stats's tolerances (the first BN layer
    exactly: no BN before it normalizes with batch statistics)."""
    model = copy.deepcopy(trained).eval()
    inverted = Data("inverted digits", -d8.x_train, d8.y_train, -d8.x_test, d8.y_test)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(inverted.x_train), (64,), generator=gen)
        loss = F.cross_entropy(model(inverted.x_train[idx]), inverted.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with pytest.raises(BNCheckError, match="stale running statistics"):
        assert_population_stats(model, inverted)
    loader = DataLoader(TensorDataset(inverted.x_train, inverted.y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    stats = recalibrate(model, loader, exact=False)
    assert not model.training and int(model[10].num_batches_tracked) == len(loader)
    report = assert_population_stats(model, inverted)
    first, second = report.layers
    assert float(first.mean_drift.max()) < 1e-5 and float(second.mean_drift.max()) > 1e-5
    assert stats["3"].count == len(inverted.x_train) * 16


def test_recalibrate_uses_the_same_batches_on_every_pass(surgery, d8):
    """The first `batches` batches of a shuffling loader, or a one-shot iterator, are kept for all the passes."""
    loader = DataLoader(TensorDataset(d8.x_train), batch_size=100, shuffle=True,
                        generator=torch.Generator().manual_seed(1))
    a, b = copy.deepcopy(surgery), copy.deepcopy(surgery)
    stats = recalibrate(a, loader, batches=3)
    assert stats["3"].count == 300 * 16 and int(a[3].num_batches_tracked) == 3
    batches = [d8.x_train[i:i + 50] for i in range(0, 200, 50)]
    recalibrate(b, iter(batches))
    assert_population_stats(b, batches, **EXACT)


def test_each_pass_ends_at_its_layer():
    class Count(nn.Module):
        calls = 0

        def forward(self, x):
            Count.calls += 1
            return x

    model = nn.Sequential(*(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) for _ in range(3)), Count()).eval()
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    recalibrate(model, x, batch_size=10)
    assert Count.calls == 2 * 4  # the first pass and the last layer's: 4 batches each
    assert_population_stats(model, x, **EXACT)


def test_recalibrate_leaves_frozen_untracked_and_uncalled_layers_alone():
    """Layers meant to be frozen keep their statistics unless named."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = torchvision.ops.FrozenBatchNorm2d(3)
            self.bn = nn.BatchNorm2d(3)
            self.plain = nn.BatchNorm2d(3, track_running_stats=False)
            self.unused = nn.BatchNorm2d(3)
            self.fixed = nn.BatchNorm2d(3).requires_grad_(False)  # γ/β frozen: meant to be frozen

        def forward(self, x):
            return self.fixed(self.plain(self.bn(self.frozen(x))))

    net = Net().eval()
    x = 3 + torch.randn(20, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    before = Snapshot.of(net)
    assert list(recalibrate(net, x)) == ["bn"]
    assert {line.split("'")[1] for line in before.differences(net)} == {
        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert list(recalibrate(net, x, layers="frozen")) == ["frozen"]  # named, a frozen layer is recalibrated too
    assert float(net.frozen.running_mean.mean()) == pytest.approx(3, abs=0.1)


@pytest.mark.parametrize("call, fragment", [
    (lambda x: recalibrate(digits_cnn(), x, batches=0), "batches=0"),
    (lambda x: recalibrate(nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False)), x),
     "no BN layer with running statistics to recalibrate"),
    (lambda x: recalibrate(digits_cnn(), x, layers="9"), "'9' (ReLU) holds no BN layer"),
    (lambda x: recalibrate(digits_cnn(), x[:0]), "data holds no samples"),
    (lambda x: recalibrate(digits_cnn(), x[:, :, :3]), "the model rejected a batch of shape (5, 1, 3, 8)"),
])
def test_bad_input_is_a_usage_error(call, fragment):
    with pytest.raises(BNCheckUsageError) as info:
        call(torch.randn(5, 1, 8, 8))
    assert fragment in str(info.value)
