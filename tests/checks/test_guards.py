"""Guards around the user's own training code catch the BN bugs of the loop around the layer (a frozen backbone put
back in train mode, an evaluation that leaves eval mode on or updates statistics, a step in eval mode, tiny last
batches) naming the layers, what moved and the likely cause; the correct counterparts pass, and the guards leave
no hook or state of their own behind."""

import pytest
import torch
import torchvision
from planted.models import (
    Detector,
    FrozenByEval,
    FrozenByTrainOverride,
    epoch_drops_last_batch,
    epoch_keeps_last_batch,
    evaluate,
    evaluate_in_train_mode,
    evaluate_leaves_eval_mode,
    train_step,
    train_step_in_eval_mode,
)
from torch import nn

import bncheck
from bncheck import BNCheckError, BNCheckUsageError, assert_bn_frozen, assert_eval_is_pure, assert_stats_updated
from bncheck.checks.watch import Watch
from bncheck.core.state import Snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def _setup(model: nn.Module):
    """`model` with an SGD optimizer over its trainable parameters and a batch."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return model, optimizer, *_batch()


def _no_hooks(model: nn.Module) -> bool:
    return not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


# --- assert_bn_frozen ------------------------------------------------------------------------------------------------


def test_bn_frozen_catches_model_train_after_freezing():
    model, opt, x, y = _setup(FrozenByEval())
    assert FrozenByEval.caught_by == "assert_bn_frozen"
    with pytest.raises(BNCheckError) as info:
        assert_bn_frozen(model, lambda: train_step(model, opt, x, y), name="detector")
    message = str(info.value)
    assert message.startswith("detector: 1 of 1 frozen BN layer(s) changed during step():\n")
    assert "- backbone.1 (BatchNorm2d, ran 1× in train mode): running_mean moved by up to " in message
    assert "num_batches_tracked 0 -> 1" in message and "γ (weight)" not in message
    assert "Likely cause: the frozen layers ran in train mode: model.train() after freezing" in message
    assert "override the model's train()" in message
    err = info.value
    assert err.where == "backbone.1" and err.quantity == "frozen BN state" and "#86590" in err.cause
    assert isinstance(err.report, Watch) and list(err.report.moved) == ["backbone.1", "head.1"]
    assert _no_hooks(model)


def test_bn_frozen_passes_when_train_keeps_the_backbone_in_eval_mode():
    model, opt, x, y = _setup(FrozenByTrainOverride())
    loss = assert_bn_frozen(model, lambda: train_step(model, opt, x, y))
    assert isinstance(loss, float)  # what step() returned
    assert int(model.head[1].num_batches_tracked) == 1  # the trainable head did train
    assert int(model.backbone[1].num_batches_tracked) == 0


def test_bn_frozen_by_name_lists_statistics_and_affine_with_both_causes():
    model, opt, x, y = _setup(Detector())
    with pytest.raises(BNCheckError) as info:
        assert_bn_frozen(model, lambda: train_step(model, opt, x, y), layers=["head"])
    message = str(info.value)
    assert "1 of 1 frozen BN layer(s)" in message and "- head.1 (BatchNorm1d" in message
    assert "γ (weight) moved by up to" in message and "β (bias) moved by up to" in message
    assert "Likely causes: (1) the frozen layers ran in train mode" in message
    assert "(2) γ/β require grad, so the optimizer updates them" in message


def test_bn_frozen_infers_frozen_batchnorm_layers_and_names_writes_outside_forward():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), torchvision.ops.FrozenBatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2))
    x, y = _batch()
    model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert_bn_frozen(model, lambda: train_step(model, opt, x, y))

    def load_other_statistics():
        with torch.no_grad():
            model[1].running_mean.add_(0.5)

    with pytest.raises(BNCheckError, match=r"(?s)- 1 \(FrozenBatchNorm2d, frozen, not called\): running_mean "
                                           r"moved by up to 0\.5\nLikely cause: the statistics were written outside"):
        assert_bn_frozen(model, load_other_statistics)


def test_bn_frozen_needs_layers_meant_to_be_frozen():
    model, opt, x, y = _setup(Detector())
    with pytest.raises(BNCheckUsageError, match=r"Detector: no BN layer is meant to be frozen .* "
                                                r"layers=\['backbone'\]"):
        assert_bn_frozen(model, lambda: train_step(model, opt, x, y))
    with pytest.raises(BNCheckUsageError, match=r"layers: 'neck' is not a module of Detector \(its BN layers: "
                                                r"'backbone\.1', 'head\.1'\)"):
        assert_bn_frozen(model, lambda: None, layers="neck")
    with pytest.raises(BNCheckUsageError, match=r"layers: 'head\.0' \(Linear\) holds no BN layer"):
        assert_bn_frozen(model, lambda: None, layers="head.0")
    assert int(model.head[1].num_batches_tracked) == 0  # a usage error runs no step


# --- assert_eval_is_pure ----------------------------------------------------------------------------------------------


def test_eval_is_pure_catches_an_evaluation_that_leaves_eval_mode_on():
    model, _, x, _ = _setup(Detector())
    with pytest.raises(BNCheckError) as info:
        assert_eval_is_pure(model, lambda: evaluate_leaves_eval_mode(model, x))
    message = str(info.value)
    assert message.startswith("Detector: evaluate() is not pure: it flipped the training flag of 12 module(s):")
    assert "- training flags changed: every module (12): train -> eval" in message
    assert "Likely cause: evaluate() switches to eval mode (model.eval()) and does not switch back" in message
    assert "model.train(was_training)" in message


def test_eval_is_pure_lists_each_flipped_module_when_only_some_flipped():
    model, _, x, _ = _setup(Detector())

    def evaluate_backbone_only():
        model.backbone.eval()
        return model(x)

    with pytest.raises(BNCheckError) as info:
        assert_eval_is_pure(model.train(), evaluate_backbone_only)
    message = str(info.value)
    assert "it flipped the training flag of 6 module(s) and it changed the state of 1 BN layer(s)" in message
    assert "- training flags changed: backbone train -> eval, backbone.0 train -> eval, backbone.1 train -> eval, " \
           "backbone.2 train -> eval, backbone.3 train -> eval, backbone.4 train -> eval\n" in message
    assert "- head.1 (BatchNorm1d, ran 1× in train mode)" in message
    assert "Likely causes: (1) evaluate() switches to eval mode" in message
    assert "(2) the BN layers ran in train mode during evaluate()" in message


def test_eval_is_pure_catches_an_evaluation_in_train_mode():
    model, _, x, _ = _setup(Detector())
    with pytest.raises(BNCheckError) as info:
        assert_eval_is_pure(model, lambda: evaluate_in_train_mode(model, x))
    message = str(info.value)
    assert "it changed the state of 2 BN layer(s)" in message and "flipped" not in message
    assert "- backbone.1 (BatchNorm2d, ran 1× in train mode): running_mean moved by up to" in message
    assert "- head.1 (BatchNorm1d, ran 1× in train mode):" in message and "num_batches_tracked 0 -> 1" in message
    assert "Likely cause: the BN layers ran in train mode during evaluate()" in message
    assert "torch.no_grad() does not stop BN" in message
    assert info.value.where == "backbone.1, head.1"


@pytest.mark.parametrize("train", [True, False])
def test_eval_is_pure_passes_a_correct_evaluation_in_either_mode(train):
    model, _, x, _ = _setup(Detector())
    model.train(train)
    before = Snapshot.of(model)
    logits = assert_eval_is_pure(model, lambda: evaluate(model, x))
    assert logits.shape == (8, 2) and before.differences(model) == [] and _no_hooks(model)


# --- assert_stats_updated ---------------------------------------------------------------------------------------------


def test_stats_updated_catches_a_step_in_eval_mode():
    model, opt, x, y = _setup(Detector())
    with pytest.raises(BNCheckError) as info:
        assert_stats_updated(model, lambda: train_step_in_eval_mode(model, opt, x, y))
    message = str(info.value)
    assert "2 of 2 BN layer(s) that should train did not update their running statistics" in message
    assert ("- backbone.1 (BatchNorm2d, ran 1× in eval mode): running_mean and running_var unchanged; "
            "num_batches_tracked stayed 0") in message
    assert "Likely cause: the layers ran in eval mode: step() does not call model.train()" in message


def test_stats_updated_catches_training_after_an_impure_evaluation():
    """The bug as users meet it: evaluate() left eval mode on, and the next epoch's step never calls train()."""
    model, opt, x, y = _setup(Detector())
    evaluate_leaves_eval_mode(model, x)

    def step_without_train():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with pytest.raises(BNCheckError, match="ran 1× in eval mode"):
        assert_stats_updated(model, step_without_train)


def test_stats_updated_passes_a_correct_step_and_skips_frozen_layers():
    model, opt, x, y = _setup(Detector())
    assert isinstance(assert_stats_updated(model, lambda: train_step(model, opt, x, y)), float)
    frozen, opt, x, y = _setup(FrozenByTrainOverride())
    assert_stats_updated(frozen, lambda: train_step(frozen, opt, x, y))  # the frozen backbone is not expected to
    with pytest.raises(BNCheckError, match=r"backbone\.1 .*ran 1× in eval mode"):
        assert_stats_updated(frozen, lambda: train_step(frozen, opt, x, y), layers="")


def test_stats_updated_names_uncalled_layers_and_momentum_zero():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.still, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(3, momentum=0.0), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.still(self.bn(x))

    net = Net().train()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    with pytest.raises(BNCheckError) as info:
        assert_stats_updated(net, lambda: net(x))
    message = str(info.value)
    assert "2 of 3 BN layer(s)" in message and "- bn " not in message
    assert "- still (BatchNorm1d, ran 1× in train mode): running_mean and running_var unchanged; " \
           "num_batches_tracked 0 -> 1" in message
    assert "- unused (BatchNorm1d, not called): running_mean and running_var unchanged" in message
    assert "(1) momentum=0" in message and "(2) step() never called the layers" in message
    with pytest.raises(BNCheckUsageError, match="keep no running statistics"):
        assert_stats_updated(nn.BatchNorm1d(3, track_running_stats=False), lambda: None, layers="")


# --- watch ------------------------------------------------------------------------------------------------------------


def test_watch_finds_the_small_last_batch_of_an_epoch():
    model, opt, _, _ = _setup(Detector())
    x, y = _batch(66)
    with bncheck.watch(model) as w:
        epoch_keeps_last_batch(model, opt, x, y, 32)
    assert [(c.layer, c.shape, c.per_channel) for c in w.small_batches()] == [("head.1", (2, 6), 2)]
    assert [c.per_channel for c in w.calls_of("backbone.1")] == [32 * 36, 32 * 36, 2 * 36]
    assert w.flips == {} and [str(c) for c in w.moved["backbone.1"]][2] == "num_batches_tracked 0 -> 3"
    text = str(w)
    assert text.splitlines()[0] == ("watch(Detector): 6 BN call(s), 6 in train mode, 0 in eval mode, on 2 of 2 BN "
                                    "layer(s)")
    assert "head.1 (BatchNorm1d): 3 train / 0 eval call(s), values per channel in train mode 2..32;" in text
    assert "train-mode calls on at most 2 values per channel: head.1 (2)" in text
    model, opt, _, _ = _setup(Detector())
    with bncheck.watch(model) as w:
        epoch_drops_last_batch(model, opt, x, y, 32)
    assert w.small_batches() == [] and len(w.calls) == 4


def test_watch_records_modes_flips_and_removes_its_hooks_on_exception():
    model, _, x, _ = _setup(Detector())
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"), bncheck.watch(model) as w:
        model.head.eval()
        model(x)
        model.head.train()
        model.backbone.eval()
        model(x[:1])  # the head's BN sees 1 value per channel in train mode: torch raises
    assert _no_hooks(model)
    assert [(c.layer, c.training) for c in w.calls] == [("backbone.1", True), ("head.1", False),
                                                        ("backbone.1", False), ("head.1", True)]
    assert w.small_batches(threshold=1)[0].shape == (1, 6)
    assert set(w.flips) == {"backbone", *(f"backbone.{i}" for i in range(5))}
    assert "training flags flipped: backbone train -> eval" in str(w)


def test_guards_add_no_state_of_their_own():
    model, _, x, _ = _setup(Detector())
    model(x)  # statistics that are not the initial ones
    before = Snapshot.of(model)
    assert_eval_is_pure(model, lambda: None)
    assert_bn_frozen(model, lambda: None, layers="")
    with bncheck.watch(model):
        pass
    with pytest.raises(BNCheckError, match="not called"):
        assert_stats_updated(model, lambda: None)
    assert before.differences(model) == [] and _no_hooks(model)
