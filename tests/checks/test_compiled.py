"""BN beyond eager mode: torch.compile and torch.export give what eager gives on correct models (the seed CNN,
torchvision's resnet18, a timm resnet), catch the planted compile and export bugs, report a model the compiler or
exporter rejects as a skip, and never change the user's model. The compiling tests are slow (inductor: seconds
to a minute each on a CPU, the first in a process the longest); each compiles its model once."""

import pytest
import timm
import torch
import torchvision
from planted.models import CompiledMomentumBN, EveryOtherCallBN, ExportBatchStatsBN, net
from plugin_runs import outcomes_by_id
from torch import nn

from bncheck import BNCheckError, BNCheckSkip, BNCheckUsageError
from bncheck.checks.compiled import assert_compile_matches
from bncheck.checks.exported import assert_export_matches, batch_statistics_ops
from bncheck.core.state import Snapshot
from bncheck.testing.examples import seed_cnn

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _image(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


CORRECT = {  # small inputs keep compilation short; a batch of 2 at 32x32 leaves 1x1 maps: BN outputs of ±1
    "seed_cnn": lambda: (seed_cnn().eval(), seed_cnn().example_input),  # eval: the user's mode must survive
    "resnet18": lambda: (torchvision.models.resnet18(num_classes=10), _image()),
    "timm_resnet10t": lambda: (timm.create_model("resnet10t", pretrained=False, num_classes=10), _image()),
}


def _outcome(check, model, x, name):
    """(the error the check raised or None, what it changed in the user's model)."""
    before = Snapshot.of(model)
    try:
        check(model, x, name=name)
        error = None
    except (BNCheckError, BNCheckSkip) as exc:
        error = exc
    return error, before.differences(model)


@pytest.fixture(scope="module", params=sorted(CORRECT))
def compiled_correct(request):
    """Each correct model through assert_compile_matches once, for the tests below to read."""
    model, x = CORRECT[request.param]()
    return request.param, *_outcome(assert_compile_matches, model, x, request.param)


@pytest.mark.slow
def test_a_correct_model_compiles_like_eager(compiled_correct):
    name, error, _ = compiled_correct
    assert error is None, f"{name}: {error}"


@pytest.mark.slow
def test_the_compile_check_leaves_the_users_model_unchanged(compiled_correct):
    name, _, changed = compiled_correct
    assert changed == [], name


@pytest.mark.slow
@pytest.mark.parametrize("mutant", [CompiledMomentumBN, EveryOtherCallBN], ids=lambda m: m.__name__)
def test_a_bn_whose_compiled_path_differs_is_caught(mutant):
    assert mutant.caught_by == "model_compile"
    model = net(mutant(4))
    before = Snapshot.of(model)
    with pytest.raises(BNCheckError) as info:
        assert_compile_matches(model, X, name=mutant.__name__)
    message = str(info.value)
    assert message.startswith(f"{mutant.__name__}, compiled vs eager in float64, train mode, after 2 steps, 1: "
                              f"running_mean differs from the float64 oracle")
    assert "Likely cause: the compiled path updates running statistics differently" in message
    assert before.differences(model) == []


# The tests below compile with the "eager" backend (dynamo's capture, no code generation): what they exercise is
# the check's handling of capture, not inductor's numerics, and it costs a second instead of tens.


def test_a_compile_error_is_a_skip_not_a_bn_defect():
    def broken(gm, example_inputs):
        raise RuntimeError("this backend compiles nothing")

    with pytest.raises(BNCheckSkip, match=r"^plain, compiled vs eager in float64, eval mode: torch.compile could "
                                          r"not compile the model \(backend 'broken'\): .*this backend compiles "
                                          r"nothing"):
        assert_compile_matches(net(nn.BatchNorm2d(4)), X, name="plain", backend=broken)


class Breaks(nn.Module):
    """conv → `bn` with a graph break between them (a print inside the forward, say)."""

    def __init__(self, bn):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), bn

    def forward(self, x):
        y = self.conv(x)
        torch._dynamo.graph_break()
        return self.bn(y)


def test_graph_breaks_are_allowed_and_named_when_a_comparison_fails():
    assert_compile_matches(Breaks(nn.BatchNorm2d(4)), X, backend="eager")
    with pytest.raises(BNCheckError, match=r"running_mean .* \[torch.compile broke the graph \d+ times \(first: "):
        assert_compile_matches(Breaks(CompiledMomentumBN(4)), X, backend="eager")


def test_a_model_excluded_from_compilation_skips():
    model = net(nn.BatchNorm2d(4))
    model.forward = torch.compiler.disable(model.forward)
    with pytest.raises(BNCheckSkip, match="torch.compile compiled no graph of the model"):
        assert_compile_matches(model, X, backend="eager")


class Float32Only(nn.BatchNorm2d):
    """A correct layer that refuses float64 input (a float32-only kernel)."""

    def forward(self, x):
        if x.dtype != torch.float32:
            raise TypeError("float32 only")
        return super().forward(x)


class Float32OnlyCompiledMomentum(Float32Only, CompiledMomentumBN):
    """CompiledMomentumBN's bug in a float32-only layer."""


def test_a_model_without_float64_is_compared_in_its_own_dtype():
    assert_compile_matches(net(Float32Only(4)), X, backend="eager")
    with pytest.raises(BNCheckError, match="running_mean"):
        assert_compile_matches(net(Float32OnlyCompiledMomentum(4)), X, backend="eager", steps=1)


def test_steps_must_be_positive():
    with pytest.raises(BNCheckUsageError, match="steps must be at least 1"):
        assert_compile_matches(net(nn.BatchNorm2d(4)), X, steps=0)


# ------------------------------------------------------------------------------------------------ torch.export

@pytest.mark.parametrize("name", sorted(CORRECT))
def test_a_correct_model_exports_like_eager_eval(name):
    model, x = CORRECT[name]()
    error, changed = _outcome(assert_export_matches, model, x, name)
    assert error is None, f"{name}: {error}"
    assert changed == []


def test_a_model_in_train_mode_is_exported_as_an_eval_copy():
    model = net(nn.BatchNorm2d(4)).train()
    error, changed = _outcome(assert_export_matches, model, X, "train-mode")
    assert error is None and changed == []


def test_a_bn_that_uses_batch_statistics_when_exporting_is_caught():
    model = net(ExportBatchStatsBN(4))
    assert ExportBatchStatsBN.caught_by == "model_export"
    with pytest.raises(BNCheckError, match=r"^ExportBatchStatsBN, exported program vs eager eval: the program "
                                           r"normalizes with batch statistics: batch_norm with training=True at "):
        assert_export_matches(model, X, name="ExportBatchStatsBN")


def test_a_program_exported_without_eval_is_caught_and_the_users_model_kept():
    """The user's mistake: torch.export.export of a model still in train mode (nn.Module's default)."""
    model = net(nn.BatchNorm2d(4))
    program = torch.export.export(model, (X,))
    assert batch_statistics_ops(program)
    before = Snapshot.of(model)
    with pytest.raises(BNCheckError, match="call .eval.. before torch.export.export"):
        assert_export_matches(model, X, name="user", program=program)
    assert before.differences(model) == []
    assert batch_statistics_ops(torch.export.export(model.eval(), (X,))) == []


def test_a_program_exported_from_another_state_is_caught():
    model = net(nn.BatchNorm2d(4)).eval()
    program = torch.export.export(model, (X,))
    stale = net(nn.BatchNorm2d(4)).eval()  # other running statistics (net draws them at random)
    with pytest.raises(BNCheckError, match=r"1.running_mean held by the program differs"):
        assert_export_matches(stale, X, name="stale", program=program)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(x) if x.sum() > 0 else -self.bn(x)


def test_a_model_torch_export_rejects_skips():
    with pytest.raises(BNCheckSkip, match="^data-dependent: torch.export could not export the model: "):
        assert_export_matches(DataDependent(), X, name="data-dependent")


# ------------------------------------------------------------------------------------------------ plugin and CLI

def _items(pytester, *flags):
    result = pytester.runpytest("--bncheck-model=bnmodels:net", "--collect-only", "-q", *flags)
    return [line.split("::")[-1] for line in result.outlines if "::" in line]


def test_the_switches_add_the_model_compile_and_model_export_items(bnmodels):
    plain = _items(bnmodels)
    assert "model_compile" not in plain and "model_export" not in plain
    assert _items(bnmodels, "--bncheck-compile") == plain + ["model_compile"]
    assert _items(bnmodels, "--bncheck-compile", "--bncheck-export") == plain + ["model_compile", "model_export"]


@pytest.fixture
def _export_imported():
    """An export before the in-process run: pytester drops the modules first imported during one."""
    torch.export.export(nn.BatchNorm1d(2).eval(), (torch.ones(2, 2),))


@pytest.mark.usefixtures("_export_imported")
def test_the_model_export_item_runs_in_the_plugin(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-export", "-k", "model_export")
    assert outcomes_by_id(result) == {"bncheck[bnmodels:net]::model_export": "passed"}
