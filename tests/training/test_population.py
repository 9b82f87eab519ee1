"""Population statistics: exact per-layer mean and variance of each BN input over a whole data set (against a
direct float64 computation and torch.optim.swa_utils.update_bn), and the drift assertion on real data: quiet for
a normally trained model, failing with layer, quantity, expected vs got, worst channel and cause for stale
statistics (fine-tuning with BN in eval mode, weight surgery), never-updated statistics and momentum 0; and
recalibrate (precise BN), which repairs them and changes nothing else."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from bncheck import recalibrate
from bncheck.core.errors import BNCheckError, BNCheckUsageError
from bncheck.core.state import Snapshot
from bncheck.core.threads import one_thread
from bncheck.data import Data
from bncheck.training.fit import fit
from bncheck.training.population import (
    assert_population_stats,
    population_drift,
    population_stats,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def digits_cnn(momentum=0.1):
    """The seed CNN's design at 8x8 (as in test_convergence.py)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(6, momentum=momentum),
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(48, 120), nn.ReLU(), nn.BatchNorm1d(120, momentum=momentum), nn.Linear(120, 60), nn.ReLU(),
        nn.Linear(60, 10))


@pytest.fixture(scope="module")
def trained(d8):
    """The digits CNN after 200 normal training steps (Adam, lr 0.003, BN momentum 0.1): ~97 % test accuracy."""
    with one_thread(), torch.random.fork_rng():
        torch.manual_seed(0)  # the initial weights: the same whichever tests ran before (xdist, -k)
        net, curve = fit(digits_cnn(), d8, lr=0.003, steps=200, stop_at_target=False)
    assert curve.final_accuracy > 0.95
    return net.eval()


def _fine_tuned_on_inverted_images(trained, d8, steps: int):
    """(a copy of `trained` fine-tuned for `steps` Adam steps on inverted digits with its BN layers in eval mode,
    the inverted data): its statistics no longer describe the inputs its layers see."""
    model = copy.deepcopy(trained).eval()
    inverted = Data("inverted digits", -d8.x_train, d8.y_train, -d8.x_test, d8.y_test)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(inverted.x_train), (64,), generator=gen)
        loss = F.cross_entropy(model(inverted.x_train[idx]), inverted.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, inverted


def _direct(x: torch.Tensor):
    """Per-channel mean and biased variance of x (N, C, *) in one float64 pass."""
    x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, correction=0), x.shape[1]


# --- exact statistics ------------------------------------------------------------------------------------------------


def test_population_stats_equal_a_direct_float64_computation(trained, d8):
    stats = population_stats(trained, d8, batch_size=100)
    assert list(stats) == ["3", "10"]
    with torch.no_grad():
        inputs = {"3": trained[:3](d8.x_train), "10": trained[:10](d8.x_train)}  # eval mode, as the model predicts
    for name, x in inputs.items():
        mean, var, n = _direct(x)
        s = stats[name]
        assert s.count == n == len(d8.x_train) * (16 if name == "3" else 1)
        torch.testing.assert_close(s.mean, mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(s.var, var, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(s.unbiased_var, var * n / (n - 1), rtol=1e-9, atol=1e-12)
        assert s.mean.dtype == torch.float64 and s.mean.device.type == "cpu"


@pytest.mark.parametrize("batch_size", [1, 7, 5000])
def test_streaming_is_exact_whatever_the_batch_size(d8, batch_size):
    """A BN fed the data itself: every batching gives the one-pass float64 statistics (to float64 rounding)."""
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten())
    got = population_stats(model, d8, batch_size=batch_size)["0"]
    mean, var, n = _direct(d8.x_train)
    assert got.count == n
    torch.testing.assert_close(got.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.var, var, rtol=1e-12, atol=1e-12)


def test_batch_size_changes_only_the_models_float32_rounding(trained, d8):
    ref = population_stats(trained, d8, batch_size=256)
    got = population_stats(trained, d8, batch_size=1)
    for name in ref:
        torch.testing.assert_close(got[name].mean, ref[name].mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[name].var, ref[name].var, rtol=1e-5, atol=1e-6)


def test_large_mean_does_not_cancel():
    """E[x²] − E[x]² in float64 would lose the variance of values around 1e8; the pairwise update does not."""
    bn = nn.BatchNorm1d(1)
    x = 1e8 + torch.arange(1000, dtype=torch.float64).reshape(-1, 1) % 7
    stats = population_stats(bn.double(), x, batch_size=33)[""]
    assert float(stats.mean) == pytest.approx(1e8 + float((torch.arange(1000) % 7).double().mean()), rel=1e-15)
    assert float(stats.var) == pytest.approx(float((torch.arange(1000) % 7).double().var(correction=0)), rel=1e-9)


def test_cross_check_with_swa_utils_update_bn(trained, d8):
    """update_bn with momentum=None over one batch holding the whole training split stores each layer's population
    mean and unbiased variance (of its train-mode input); population_stats agrees, and the assertion passes with
    tight tolerances on every channel."""
    model = copy.deepcopy(trained)
    update_bn([d8.x_train], model)  # resets the statistics, momentum=None, one train-mode pass
    stats = population_stats(model, d8)
    first = model[3]
    torch.testing.assert_close(first.running_mean.double(), stats["3"].mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var.double(), stats["3"].unbiased_var, rtol=1e-5, atol=1e-6)
    # the second layer's eval-mode input uses the first layer's unbiased running variance where train mode used the
    # biased batch variance: a factor sqrt(n/(n − 1)), n = 1438·16, away from exact
    torch.testing.assert_close(model[10].running_mean.double(), stats["10"].mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[10].running_var.double(), stats["10"].unbiased_var, rtol=1e-4, atol=1e-6)
    assert_population_stats(model, d8, quantile=1.0, mean_tol=1e-3, var_ratio=1.001)
    # several equal batches: update_bn's cumulative mean of batch means is still the population mean
    several = copy.deepcopy(trained)
    update_bn(DataLoader(TensorDataset(d8.x_train[:1400], d8.y_train[:1400]), batch_size=100), several)
    torch.testing.assert_close(several[3].running_mean.double(),
                               population_stats(several, d8.x_train[:1400])["3"].mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["data_test", "tensor", "loader", "list"])
def test_data_forms(trained, d8, form):
    data = {"data_test": d8, "tensor": d8.x_test, "loader": DataLoader(TensorDataset(d8.x_test, d8.y_test),
                                                                        batch_size=50),
            "list": [d8.x_test[:100], d8.x_test[100:]]}[form]
    stats = population_stats(trained, data, split="test")
    mean, var, _ = _direct(trained[:3](d8.x_test).detach())
    torch.testing.assert_close(stats["3"].mean, mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats["3"].var, var, rtol=1e-9, atol=1e-9)


def test_the_users_model_is_unchanged(d8):
    model = digits_cnn().train()
    model[0].weight.requires_grad_(False)
    before = Snapshot.of(model)
    population_stats(model, d8)
    with pytest.raises(BNCheckError):
        assert_population_stats(model, d8)  # fresh statistics: fails, and on failure too nothing changed
    assert before.differences(model) == []
    assert model.training and not model[0].weight.requires_grad


# --- the drift assertion ---------------------------------------------------------------------------------------------


def test_normally_trained_model_passes(trained, d8):
    report = assert_population_stats(trained, d8)
    assert [d.layer for d in report.layers] == ["3", "10"] and report.untracked == report.not_called == []
    text = str(report)
    assert "digits, train split (1438 samples)" in text
    assert text.splitlines()[2].split()[:2] == ["3", "BatchNorm2d"]


def test_weight_surgery_fails_naming_layer_quantity_values_and_channel(trained, d8):
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model[0].weight.mul_(2)  # the first conv's output doubles; its BN still expects the old scale
        model[0].bias.mul_(2)
    before = Snapshot.of(model)
    with pytest.raises(BNCheckError) as info:
        assert_population_stats(model, d8, name="digits_cnn")
    message = str(info.value)
    first = message.splitlines()[1]
    assert first.startswith("- layer '3' (BatchNorm2d): running_mean is ")
    assert re.search(r"running_var is 0\.2\d*× the population \(unbiased\) variance on the median channel", first)
    assert "6 of 6 channels beyond" in first and "worst at channel" in first
    pop = population_stats(model, d8)["3"]
    c = int(((model[3].running_var.double() + 1e-5) / (pop.unbiased_var + 1e-5)).log().abs().argmax())
    assert f"worst at channel {c}: expected {float(pop.unbiased_var[c]):.6g}, " \
           f"got {float(model[3].running_var[c]):.6g}" in first
    assert "stale running statistics" in first and "update_bn" in first
    assert "Layers after '3' see its output" in message
    assert message.startswith("digits_cnn: 2 BN layer(s)")
    assert before.differences(model) == []


def test_fine_tuning_with_bn_in_eval_mode_leaves_stale_statistics(trained, d8):
    """Fine-tune every weight on inverted images with the BN layers in eval mode (frozen statistics): the
    statistics no longer describe the inputs the layers now see."""
    model, inverted = _fine_tuned_on_inverted_images(trained, d8, steps=100)
    with pytest.raises(BNCheckError, match=r"(?s)layer '10' \(BatchNorm1d\): running_mean is .* stale running"):
        assert_population_stats(model, inverted)
    assert_population_stats(trained, d8)  # the model it was copied from is still fine


def test_never_updated_statistics(d8):
    with pytest.raises(BNCheckError, match="never updated \\(still the initial 0 and 1\\)"):
        assert_population_stats(digits_cnn(), d8)


def test_momentum_zero(d8):
    net, _ = fit(digits_cnn(momentum=0.0), d8, lr=0.003, steps=20, stop_at_target=False)
    with pytest.raises(BNCheckError, match="momentum=0: the running statistics never move"):
        assert_population_stats(net, d8)


def test_quantile_one_judges_every_channel(trained, d8):
    """A normally trained model has a few nearly dead channels whose running statistics are far off: the median
    ignores them, quantile=1 does not."""
    report = population_drift(trained, d8)
    worst = max(d.worst_var()[1] for d in report.layers)
    least = min(d.worst_var()[1] for d in report.layers)
    assert worst > 1.5 or least < 1 / 1.5, str(report)
    with pytest.raises(BNCheckError, match="on the least close channel"):
        assert_population_stats(trained, d8, quantile=1.0)


def test_untracked_and_uncalled_layers_are_listed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)
            self.plain = nn.BatchNorm1d(3, track_running_stats=False)
            self.unused = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.plain(self.bn(x))

    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.copy_(x.mean(0))
        net.bn.running_var.copy_(x.var(0))
    report = assert_population_stats(net, x, batch_size=10)
    assert [d.layer for d in report.layers] == ["bn"]
    assert report.untracked == ["plain"] and report.not_called == ["unused"]
    assert "no running statistics (track_running_stats=False): plain" in str(report)
    assert "not called in the forward pass: unused" in str(report)
    with pytest.raises(BNCheckUsageError, match="no BN layer with running statistics was called"):
        assert_population_stats(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), x)


@pytest.mark.parametrize("call, fragment", [
    (lambda d: population_stats(digits_cnn(), d, split="val"), "split='val': expected 'train' or 'test'"),
    (lambda d: population_stats(digits_cnn(), "digits"), "data: expected a bncheck Data"),
    (lambda d: population_stats(digits_cnn(), [(1, 2)]), "a batch of the data is a int"),
    (lambda d: population_stats(digits_cnn(), torch.zeros(0, 1, 8, 8)), "data holds no samples"),
    (lambda d: population_stats(digits_cnn(), torch.zeros(4, 3, 8, 8)), "the model rejected a batch of shape "
                                                                        "(4, 3, 8, 8): RuntimeError"),
    (lambda d: population_stats(digits_cnn(), d, batch_size=0), "batch_size=0"),
    (lambda d: assert_population_stats(digits_cnn(), d, var_ratio=0.5), "var_ratio ≥ 1"),
])
def test_bad_input_is_a_one_line_usage_error(d8, call, fragment):
    with pytest.raises(BNCheckUsageError) as info:
        call(d8)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# --- recalibrate: precise BN, the remedy for what assert_population_stats finds -------------------------------

EXACT = {"mean_tol": 1e-5, "var_ratio": 1 + 1e-5, "quantile": 1.0}  # every channel, to float32 rounding
STATISTICS = {f"{layer}.{q}" for layer in ("3", "10") for q in ("running_mean", "running_var", "num_batches_tracked")}


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
    model, inverted = _fine_tuned_on_inverted_images(trained, d8, steps=60)
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
