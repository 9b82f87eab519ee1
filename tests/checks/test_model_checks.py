"""Model-level checks pass on real models and catch the model-level bugs they exist for."""

import pytest
import torch
import torchvision
from planted.models import (
    DefaultStatsBN,
    EpsOutsideInEvalBN,
    EvalIgnoredBN,
    LogsBatchStatistics,
    PerImage,
    Siamese,
    TrainIgnoredBN,
    TwoInputs,
    UnsavedStatsBN,
    UpdatedTwiceBN,
    net,
)
from torch import nn

from bncheck import BNCheckError, BNCheckSkip
from bncheck.checks import MODEL_CHECKS
from bncheck.core.state import Snapshot

X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))

MUTANTS = {
    "bn_mode": EvalIgnoredBN(4),
    "eval_state": EvalIgnoredBN(4),
    "eval_single_sample": EvalIgnoredBN(4),
    "train_vs_eval": TrainIgnoredBN(4),
    "state_dict_roundtrip": UnsavedStatsBN(4),
    "fusion": EpsOutsideInEvalBN(4),
}


@pytest.mark.parametrize("check", sorted(MUTANTS))
def test_each_model_check_catches_its_mutant(check):
    model = net(MUTANTS[check])
    with pytest.raises(BNCheckError) as info:
        MODEL_CHECKS[check](model, X, name="mutant-net")
    assert "mutant-net" in str(info.value)
    assert "Likely cause" in str(info.value) or "differs" in str(info.value)


def test_running_stats_catches_statistics_moved_outside_the_layer():
    with pytest.raises(BNCheckError, match=r"logging, train mode, one forward: bn .*running_mean.*outside its forward"):
        MODEL_CHECKS["running_stats"](LogsBatchStatistics(), X, name="logging")


def test_every_model_check_has_a_mutant():
    assert set(MODEL_CHECKS) == set(MUTANTS) | {"running_stats"}  # its mutants have tests of their own below


CORRECT = {
    "bn2d": lambda: (net(nn.BatchNorm2d(4)), X),
    "frozen": lambda: (net(torchvision.ops.FrozenBatchNorm2d(4)), X),
    "resnet18": lambda: (torchvision.models.resnet18(num_classes=5), torch.randn(4, 3, 32, 32)),
    "mobilenet_v3_small": lambda: (torchvision.models.mobilenet_v3_small(num_classes=5), torch.randn(4, 3, 32, 32)),
}


@pytest.mark.parametrize("check", sorted(MODEL_CHECKS))
@pytest.mark.parametrize("model_name", sorted(CORRECT))
def test_correct_models_pass_and_are_unchanged(model_name, check):
    model, x = CORRECT[model_name]()
    snap = Snapshot.of(model)
    try:
        MODEL_CHECKS[check](model, x, name=model_name)
    except BNCheckSkip:
        pass
    assert snap.differences(model) == []


def test_mutant_models_are_unchanged_after_failing_checks():
    for check, bn in MUTANTS.items():
        model = net(bn)
        model.eval()
        model[0].weight.requires_grad_(False)
        snap = Snapshot.of(model)
        with pytest.raises(BNCheckError):
            MODEL_CHECKS[check](model, X)
        assert snap.differences(model) == [], check


def test_running_stats_catches_layers_that_share_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), DefaultStatsBN(4), nn.ReLU(), nn.Conv2d(4, 4, 3), DefaultStatsBN(4))
    with pytest.raises(BNCheckError, match=r"1.running_mean and 4.running_mean are one tensor.*mutable default"):
        MODEL_CHECKS["running_stats"](model, X, name="shared")
    # each layer alone is a correct BN: the per-layer checks cannot see this
    bn = DefaultStatsBN(4)
    bn.running_mean, bn.running_var = torch.zeros(4), torch.ones(4)
    MODEL_CHECKS["running_stats"](nn.Sequential(nn.Conv2d(3, 4, 3), bn), X, name="own")


def test_running_stats_expects_one_update_per_call_of_a_shared_layer():
    MODEL_CHECKS["running_stats"](Siamese(nn.BatchNorm2d(4)), X, name="siamese")
    MODEL_CHECKS["running_stats"](Siamese(nn.BatchNorm2d(4, momentum=None)), X, name="siamese")
    # a layer whose own update is wrong does the same alone: the per-layer running_stats item reports it
    MODEL_CHECKS["running_stats"](Siamese(UpdatedTwiceBN(4)), X, name="siamese")


def test_train_vs_eval_skips_when_no_layer_tracks_stats():
    with pytest.raises(BNCheckSkip, match="no BN layer"):
        MODEL_CHECKS["train_vs_eval"](net(torchvision.ops.FrozenBatchNorm2d(4)), X)


def test_eval_single_sample_compares_per_image_outputs_per_image():
    MODEL_CHECKS["eval_single_sample"](PerImage(nn.BatchNorm2d(4)), X, name="per-image")
    with pytest.raises(BNCheckError, match=r"per-image, eval mode, sample 0 alone vs in a batch of 6"):
        MODEL_CHECKS["eval_single_sample"](PerImage(EvalIgnoredBN(4)), X, name="per-image")


@pytest.mark.parametrize("check", sorted(MODEL_CHECKS))
def test_every_model_check_takes_a_tuple_of_arguments(check):
    """Each check runs to the end (no skip, no TypeError from calling forward with the tuple as one argument)."""
    MODEL_CHECKS[check](TwoInputs(nn.BatchNorm2d(4)), (X, X.flip(0)), name="two-inputs")


def test_eval_single_sample_slices_every_argument():
    with pytest.raises(BNCheckError, match="two-inputs, eval mode, sample 0 alone vs in a batch of 6"):
        MODEL_CHECKS["eval_single_sample"](TwoInputs(EvalIgnoredBN(4)), (X, X.flip(0)), name="two-inputs")


def test_train_vs_eval_is_not_fooled_by_dropout_after_a_bn_that_ignores_its_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), TrainIgnoredBN(4), nn.Dropout(0.5), nn.Flatten())
    with pytest.raises(BNCheckError, match="train-mode and eval-mode outputs are identical"):
        MODEL_CHECKS["train_vs_eval"](model, X, name="dropout-net")
    MODEL_CHECKS["train_vs_eval"](nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)), X)
