"""Correct models bncheck once failed (issue 11), one class each: the correct model passes, and a mutant of the
same shape still fails. The zoo (tests/zoo/) proves the same on real model libraries."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from planted.correct import BatchNormAct2d
from planted.layers import EvalBatchMean, StridesIgnored, build
from planted.layers import EvalUsesBatchStats as EvalUsesBatchStatsBN
from planted.models import (
    EvalEpsOutsideSqrtAct,
    EvalMovesRunningMean,
    Exploding,
    Float32Compute,
    Float32ComputeWrongEps,
    PartlyNaN,
    RoundsWithTheBatch,
    StatsAsAttributes,
    TrainIgnoredBN,
    net,
)
from plugin_runs import outcomes_by_id
from torch import nn

from bncheck import (
    LAYER_CHECKS,
    MODEL_CHECKS,
    BNCheckError,
    BNCheckSkip,
    BNCheckUsageError,
    assert_batch_stats,
    assert_dtype,
    assert_eval_no_state_change,
    assert_eval_single_sample,
    assert_fusion_matches,
    assert_memory_format,
    assert_non_contiguous,
    assert_state_dict_roundtrip,
)
from bncheck import check_model as bncheck_report
from bncheck.core.state import Snapshot
from bncheck.core.tolerances import Tolerance


def _x(*shape, seed=0, offset=0.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) + offset


def _run_all_model_checks(model, x) -> dict[str, str]:
    """check -> 'passed' | 'skipped' for every model check; a BNCheckError propagates, and so does a run where
    every check skipped (a pass that proves nothing)."""
    outcomes = {}
    for check, fn in MODEL_CHECKS.items():
        try:
            fn(model, x, name="model")
            outcomes[check] = "passed"
        except BNCheckSkip:
            outcomes[check] = "skipped"
    assert "passed" in outcomes.values(), f"every model check skipped: {outcomes}"
    return outcomes


# 1. fusion compares like with like: a BN + activation layer is fused without its activation -----------------------

def _conv_bn_act(bn):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), bn).eval()
    with torch.no_grad():  # statistics of a trained model: var near eps makes a misplaced eps visible
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([1e-3, 2.0, 0.5, 1e-2]))
        bn.eps = 1e-3
    return model


def test_fusion_of_a_bn_act_layer_compares_like_with_like():
    assert_fusion_matches(_conv_bn_act(BatchNormAct2d(4, nn.ReLU())), _x(4, 3, 8, 8), name="bnact")
    with pytest.raises(BNCheckError, match="0 fused with 1"):
        assert_fusion_matches(_conv_bn_act(EvalEpsOutsideSqrtAct(4, nn.ReLU())), _x(4, 3, 8, 8), name="mutant")


# 2. Lazy models: materializing is set-up, not a state change --------------------------------------------------------

def test_lazy_models_pass_every_model_check_and_are_left_lazy():
    model = nn.Sequential(nn.LazyConv2d(4, 3, bias=False), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(3), nn.LazyBatchNorm1d())
    before = Snapshot.of(model)
    outcomes = _run_all_model_checks(model, _x(4, 3, 8, 8))
    assert outcomes["eval_state"] == outcomes["state_dict_roundtrip"] == outcomes["fusion"] == "passed", outcomes
    assert before.differences(model) == []
    assert any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())
    mutant = nn.Sequential(nn.LazyConv2d(4, 3, bias=False), EvalMovesRunningMean(4))
    with pytest.raises(BNCheckError, match="a forward changed the model"):
        assert_eval_no_state_change(mutant, _x(4, 3, 8, 8), name="mutant")


# 3. an output in another dtype is a warning when its values are right ------------------------------------------------

def test_a_float32_result_for_half_input_warns_and_wrong_values_still_fail():
    x = _x(4, 3, 5, 5)
    with pytest.warns(match="returns float32 for float16 input"):
        assert_dtype(Float32Compute(3), x, name="promotes")
    with warnings.catch_warnings(), pytest.raises(BNCheckError, match="float16 input, train mode: output differs"):
        warnings.simplefilter("ignore")
        assert_dtype(Float32ComputeWrongEps(3, eps=1e-1), x, name="wrong")


# 4. no layer is held to a bound torch's own BN misses: every affine x track_running_stats x dtype --------------------

@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_batchnorm_passes_the_dtype_check_in_every_configuration(affine, track, dtype):
    for x in (_x(8, 16, 6, 6, offset=3.0), _x(8, 16, offset=-20.0)):
        bn = (nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d)(16, affine=affine, track_running_stats=track)
        assert_dtype(bn, x, name=f"affine={affine}, track={track}", dtypes=(dtype,))


def test_the_reference_bound_is_reported_and_a_half_precision_mutant_still_fails():
    """Torch's half-precision path widens the bound; a layer that normalizes in float16 without float32
    accumulation on large offsets is still far outside it."""

    class HalfVariance(nn.BatchNorm2d):
        """Computes the variance as E[x²] − E[x]² in the input dtype: catastrophic cancellation."""

        def forward(self, x):
            if not self.training or x.dtype == torch.float32:
                return super().forward(x)
            mean = x.mean((0, 2, 3), keepdim=True)
            var = (x * x).mean((0, 2, 3), keepdim=True) - mean * mean
            y = (x - mean) / (var.clamp_min(0) + self.eps).sqrt()
            return (y * self.weight.to(x.dtype)[:, None, None] + self.bias.to(x.dtype)[:, None, None])

    with pytest.raises(BNCheckError, match="float16 input, train mode: output differs"):
        assert_dtype(HalfVariance(16), _x(8, 16, 6, 6, offset=3.0), name="half", dtypes=(torch.float16,))
    assert "torch's own deviation" in str(Tolerance(1e-2, 1e-2).allowing(0.02))
    assert Tolerance(1e-2, 1e-2).allowing(float("nan")) == Tolerance(1e-2, 1e-2)


# 5. the state_dict round trip: NaN where NaN is, a gentle step, a skip when nothing is finite ----------------------

def test_state_dict_roundtrip_treats_nan_as_nan_and_skips_when_nothing_is_finite():
    assert_state_dict_roundtrip(PartlyNaN(), _x(8, 4), name="partly-nan")
    with pytest.raises(BNCheckSkip, match="not finite anywhere"):
        assert_state_dict_roundtrip(Exploding(), _x(8, 4), name="exploding")
    with pytest.raises(BNCheckError, match="not in the state_dict"):
        assert_state_dict_roundtrip(StatsAsAttributes(), _x(8, 4), name="mutant")


# 6. non-finite input: one clear error naming the first BN, nothing else blamed --------------------------------------

def test_a_non_finite_input_is_one_error_naming_the_first_bn(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:overflow")
    assert outcomes_by_id(result) == {"bncheck[bnmodels:overflow]::finite_input": "failed"}
    result.stdout.fnmatch_lines(["*bnmodels:overflow: bn1 (BatchNorm2d): the input (4, 4, 6, 6) holds * NaN and "
                                 "* inf of 576 values in the forward pass*"])
    with pytest.raises(BNCheckUsageError, match="holds 1 NaN and 0 inf"):
        assert_batch_stats(nn.BatchNorm1d(3), torch.tensor([[1.0, 2.0, float("nan")], [0.0, 1.0, 2.0]]))


# 7. bounds that grow with depth and width: the float64 model is the reference -------------------------------------

def test_eval_single_sample_allows_what_float32_rounding_shows_against_float64():
    x = _x(8, 6, offset=0.5)
    model = RoundsWithTheBatch().eval()
    assert_eval_single_sample(model, x, name="rounding")
    with pytest.raises(BNCheckError, match="sample 0 alone raised ValueError: Expected more than 1 value"):
        assert_eval_single_sample(RoundsWithTheBatch(batch_stats_in_eval=True), x, name="rounding")
    with pytest.raises(BNCheckError, match="sample 0 alone vs in a batch of 8"):
        assert_eval_single_sample(RoundsWithTheBatch(batch_stats_in_eval=True), _x(8, 6, 3), name="rounding")


def test_deep_float64_reference_is_skipped_quietly_where_the_model_cannot_run_in_float64():
    class Float32Only(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(F.linear(x, torch.eye(3)))  # float32 weights made on the fly: float64 input fails

    assert_eval_single_sample(Float32Only().eval(), _x(8, 3), name="float32-only")


# 8. a float64 model: every check runs ------------------------------------------------------------------------------

def test_a_float64_model_passes_every_item(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:double", "-p", "no:warnings")
    outcomes = outcomes_by_id(result)
    assert outcomes["bncheck[bnmodels:double]::dtype[1]"] == "passed"
    assert "failed" not in outcomes.values(), result.stdout.str()[-3000:]


def test_every_layer_check_passes_torch_batchnorm_in_float64():
    x = _x(6, 4, 5, 5).double()
    ran = 0
    for check in LAYER_CHECKS.values():
        try:
            check(nn.BatchNorm2d(4).double(), x, name="float64")
            ran += 1
        except BNCheckSkip:
            pass
    assert ran >= len(LAYER_CHECKS) - 1


# 9. torch's own channels_last kernel sets the bar -------------------------------------------------------------------

def test_torch_batchnorm3d_channels_last_passes_where_its_kernel_rounds_differently():
    """On large offsets torch's channels_last_3d kernel is 4e-3 off its contiguous one: not a defect."""
    x = _x(2, 8, 16, 64, 64, offset=1000.0)
    assert_memory_format(nn.BatchNorm3d(8), x, name="bn3d")
    assert_batch_stats(nn.BatchNorm3d(8), x, name="bn3d")


# 10. several inputs: the factory form, and an error that says so --------------------------------------------------

def test_a_model_of_two_inputs_runs_from_the_factory_form_and_the_plain_spec_says_how(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:two_inputs_factory", "-p", "no:warnings")
    assert result.ret == 0 and "passed" in set(outcomes_by_id(result).values())
    result = bnmodels.runpytest("--bncheck-model=bnmodels:two_inputs", "--bncheck-input-shape=3,8,8")
    result.stderr.fnmatch_lines(["*bnmodels:two_inputs: the model rejected the example input (8, 3, 8, 8): TypeError*"
                                 " (a model that takes several inputs needs them as a "
                                 "tuple: a factory returning (module, (input1, input2, ...))*"])


# 11. layouts are compared in float64: strided and contiguous kernels sum in different orders -----------------------

def test_non_contiguous_inputs_are_compared_in_float64_where_the_layer_runs_in_it():
    """In float32 a Mask R-CNN head's BN once differed in dγ by 6e-4 (relative) between an expanded input and its
    contiguous copy: torch's own two kernels summing 784 terms in different orders. Compared in float64, only a
    layer that really ignores strides differs; a layer without float64 kernels is compared at FUSION's bound."""
    x = _x(4, 16, 14, 14, offset=50.0)
    assert_non_contiguous(nn.BatchNorm2d(16), x, name="bn")
    layer, probe = build(StridesIgnored)
    with pytest.raises(BNCheckError, match=r"transposed \(non-contiguous, strides .*, float64\)"):
        assert_non_contiguous(layer, probe, name="mutant")


# 11. real libraries' model shapes (the zoo beyond torchvision and timm) -------------------------------------------

class TinyGNN(nn.Module):
    """torch_geometric's layout: node features (N, F), an int64 edge_index (2, E), message passing, then BN."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.lin, self.bn = nn.Linear(16, 8, bias=False), bn

    def forward(self, x, edge_index):
        h = self.lin(x)
        src, dst = edge_index
        return self.bn(h.clone().index_add_(0, dst, h[src])).relu()


def _ring(n: int) -> torch.Tensor:
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    return torch.cat([ring, ring.flip(0)], 1)


def test_a_graph_input_is_passed_whole_and_one_node_alone_is_not_a_sample():
    model, inputs = TinyGNN(nn.BatchNorm1d(8)), (_x(8, 16), _ring(8))
    report = bncheck_report(model, inputs)
    assert report.failures == [] and inputs[1].dtype == torch.int64
    [skip] = [o for o in report.skips if o.name == "model_eval_single_sample"]
    assert "integer tensor without the batch dim" in skip.message
    with pytest.raises(BNCheckError):  # the per-layer item still sees batch statistics in eval
        LAYER_CHECKS["eval_single_sample"](build(EvalBatchMean)[0], build(EvalBatchMean)[1], name="gnn")


class WithBatchLoss(nn.Module):
    """(logits, a batch-level auxiliary loss), as pytorch-tabnet's TabNet returns."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.fc, self.bn = nn.Linear(16, 4, bias=False), bn

    def forward(self, x):
        y = self.bn(self.fc(x))
        return y, y.pow(2).mean()


def test_a_batch_level_output_is_left_out_of_the_single_sample_comparison():
    assert_eval_single_sample(WithBatchLoss(nn.BatchNorm1d(4)), _x(8, 16))
    mutant = WithBatchLoss(nn.BatchNorm1d(4, track_running_stats=False))  # batch statistics in eval
    with pytest.raises((BNCheckError, BNCheckSkip)):
        assert_eval_single_sample(mutant, _x(8, 16))
    broken = WithBatchLoss(EvalUsesBatchStatsBN(4))
    with pytest.raises(BNCheckError, match="output differs"):
        assert_eval_single_sample(broken, _x(8, 16))


def _qat(after: nn.Module) -> nn.Module:
    """torch's own quantization-aware training: conv-bn-relu fused (fuse_modules_qat) and prepared (prepare_qat),
    then `after` (left as it is: fusion takes torch's own classes only)."""
    from torch.ao import quantization as tq

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
            self.conv, self.bn, self.relu = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
            self.after = after

        def forward(self, x):
            return self.dequant(self.after(self.relu(self.bn(self.conv(self.quant(x))))).mean((2, 3)))

    torch.manual_seed(0)
    model = M().train()
    tq.fuse_modules_qat(model, [["conv", "bn", "relu"]], inplace=True)
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notices of eager-mode QAT
        return tq.prepare_qat(model, inplace=True)


def test_quantization_observers_updating_in_eval_are_not_blamed_on_bn():
    report = bncheck_report(_qat(nn.Identity()), _x(8, 3, 16, 16))
    assert report.failures == [] and report.counts()["passed"] >= 20
    moving = _qat(EvalMovesRunningMean(8))  # a BN that does move in eval, inside the same QAT model
    with pytest.raises(BNCheckError, match="running_mean"):
        assert_eval_no_state_change(moving, _x(8, 3, 16, 16))


def _vanishing(gamma: float) -> nn.Module:
    """16 conv→BN→ReLU blocks whose γ start at `gamma` (transformers' EfficientNet initializes γ ~ N(0, 0.02))."""
    torch.manual_seed(0)
    blocks = [m for _ in range(16) for m in (nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())]
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.fill_(gamma)
    return model


def test_a_signal_that_vanishes_before_the_output_skips_train_vs_eval_and_a_mode_blind_bn_still_fails():
    from bncheck import assert_model_train_vs_eval

    with pytest.raises(BNCheckSkip, match="the same for every sample"):
        assert_model_train_vs_eval(_vanishing(0.0), _x(8, 3, 8, 8))
    with pytest.raises(BNCheckError, match="identical"):
        assert_model_train_vs_eval(net(TrainIgnoredBN(4)), _x(8, 3, 8, 8))
