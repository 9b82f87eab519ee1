"""The pytest plugin end to end: options, ini settings, collection and ids (serial, -k, --lf, xdist), header,
summary, fixtures, lints as warnings, one-line usage errors, and the user's model left untouched.

Each test writes tests/planted/specs.py into its pytester directory as `bnmodels.py` and runs pytest on
`--bncheck-model=bnmodels:<name>`. Runs are in-process (fast: torch is imported once) unless a test says why
not; in-process runs get the very model objects a test imported, which is how "unchanged" is proven.
"""

import importlib
import re
from pathlib import Path

import pytest
import torch
from plugin_runs import assert_usage_error, collected_ids, expected_ids, outcomes_by_id, selected_ids

import bncheck.run.plan  # noqa: F401  (imported once here: in-process runs then reuse it instead of re-importing)
from bncheck.checks import LAYER_CHECKS, MODEL_CHECKS
from bncheck.checks.lints import LINTS
from bncheck.core.state import Snapshot

HAS_CUDA = torch.cuda.is_available()
AUTO_DEVICE = "cuda" if HAS_CUDA else "cpu"


def load_models():
    """The `bnmodels` module object that in-process runs will load models from (same objects)."""
    return importlib.import_module("bnmodels")


# --- options, header, summary -------------------------------------------------------------------------------------


def test_options_and_ini_names_in_help(pytester, _lazy_torch_imports):
    result = pytester.runpytest("--help")
    assert result.ret == 0
    text = result.stdout.str()
    assert re.search(r"^bncheck: BatchNorm contract checks:$", text, re.M)
    group = text.split("bncheck: BatchNorm contract checks:")[1].split("\n\n")[0]
    for option in ("--bncheck-model=SPEC", "--bncheck-input-shape=C,H,W", "--bncheck-batch-size",
                   "--bncheck-device", "--bncheck-dtype", "--bncheck-seed", "--bncheck-strict"):
        assert option in group
    ini_section = text.split("[pytest] configuration options")[1] if "[pytest] configuration options" in text \
        else text.split("[pytest] ini-options")[1]
    for ini, kind in (("bncheck_model", "linelist"), ("bncheck_input_shape", "string"),
                      ("bncheck_batch_size", "string"), ("bncheck_device", "string"), ("bncheck_dtype", "string"),
                      ("bncheck_seed", "string"), ("bncheck_strict", "bool")):
        assert re.search(rf"^  {ini} \({kind}\):", ini_section, re.M), ini


def test_model_alone_runs_only_bncheck_items_with_header_and_summary(bnmodels):
    bnmodels.makepyfile(test_user="def test_user_fails():\n    assert False\n")
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net")
    outcomes = outcomes_by_id(result)
    assert list(outcomes) == expected_ids("bnmodels:net", ["features.1", "bn1"])  # test_user.py is not run
    # channels_last needs 4-D or 5-D input: memory_format skips on BatchNorm1d
    assert {nodeid: o for nodeid, o in outcomes.items() if o != "passed"} == {
        "bncheck[bnmodels:net]::memory_format[bn1]": "skipped"}
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        f"bncheck: bnmodels:net on {AUTO_DEVICE}, float32 (dtype check: float16, bfloat16), torch "
        f"{torch.__version__}; "
        f"input 3,8,8 (the model's example_input), batch 4, seed 0; 2 BN layers (BatchNorm1d: 1, BatchNorm2d: 1)",
        "bncheck: reproduce with: pytest --bncheck-model=bnmodels:net --bncheck-seed=0",
        f"collected {len(outcomes)} items",  # bncheck's items count as collected ones
    ])
    n_model = len(MODEL_CHECKS) + len(LINTS)
    summary = result.stdout.str().split("bncheck summary")[1].splitlines()[1:4]
    assert summary == [
        f"bncheck[bnmodels:net] features.1: {len(LAYER_CHECKS)} passed, 0 failed",
        f"bncheck[bnmodels:net] bn1: {len(LAYER_CHECKS) - 1} passed, 0 failed, 1 skipped",
        f"bncheck[bnmodels:net] model: {n_model} passed, 0 failed",
    ]


def test_without_model_option_the_plugin_adds_nothing(pytester, _lazy_torch_imports):
    pytester.makepyfile(test_user="def test_user():\n    pass\n")
    result = pytester.runpytest()
    assert outcomes_by_id(result) == {"test_user.py::test_user": "passed"}
    assert not [line for line in result.outlines if line.startswith("bncheck")]
    assert "bncheck summary" not in result.stdout.str()


def test_test_paths_add_bncheck_items_to_the_users_and_fixtures_work(bnmodels):
    bnmodels.makepyfile(test_user="""
        import copy

        import pytest
        import torch

        import bnmodels
        from bncheck import BNCheckError, assert_running_stats


        def test_bncheck_model_is_the_users_object(bncheck_model):
            assert bncheck_model is bnmodels.net


        def test_bn_layers_by_name(bn_layers):
            assert list(bn_layers) == ["features.1", "bn1"]
            assert bn_layers["features.1"] is bnmodels.net.features[1]
            assert bn_layers["bn1"] is bnmodels.net.bn1


        def test_assert_functions_import_from_bncheck(bn_layers):
            x = torch.randn(4, 4, 6, 6, generator=torch.Generator().manual_seed(0))
            assert_running_stats(copy.deepcopy(bn_layers["features.1"]), x)
            with pytest.raises(BNCheckError, match="momentum convention flipped"):
                assert_running_stats(copy.deepcopy(bnmodels.flipped[1]), x)
    """)
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "test_user.py", "-k", "test_ or lint_redundant")
    assert outcomes_by_id(result) == {
        "test_user.py::test_bncheck_model_is_the_users_object": "passed",
        "test_user.py::test_bn_layers_by_name": "passed",
        "test_user.py::test_assert_functions_import_from_bncheck": "passed",
        "bncheck[bnmodels:net]::lint_redundant_bias": "passed",
    }


def test_fixtures_skip_without_model_option(pytester, _lazy_torch_imports):
    pytester.makepyfile(test_user="def test_a(bncheck_model):\n    pass\n\ndef test_b(bn_layers):\n    pass\n")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no --bncheck-model given*"])


def test_each_model_gets_a_header_line_and_its_items(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-model=bnmodels:factory",
                                "--bncheck-model=bnmodels:net", "--collect-only")
    assert result.ret == 0
    assert selected_ids(result) == expected_ids("bnmodels:net", ["features.1", "bn1"]) + expected_ids(
        "bnmodels:factory", ["1"])  # the repeated spec is checked once
    header = [line for line in result.outlines if line.startswith("bncheck: ")]
    assert header == [
        f"bncheck: bnmodels:net on {AUTO_DEVICE}, float32 (dtype check: float16, bfloat16), torch "
        f"{torch.__version__}; "
        f"input 3,8,8 (the model's example_input), batch 4, seed 0; 2 BN layers (BatchNorm1d: 1, BatchNorm2d: 1)",
        f"bncheck: bnmodels:factory on {AUTO_DEVICE}, float32 (dtype check: float16, bfloat16), torch "
        f"{torch.__version__}; "
        f"input 2,8,8 (the factory's example input), batch 4, seed 0; 1 BN layers (BatchNorm2d: 1)",
        "bncheck: reproduce with: pytest --bncheck-model=bnmodels:net --bncheck-model=bnmodels:factory "
        "--bncheck-seed=0",
    ]


@pytest.mark.parametrize("args, layers", [
    (["--bncheck-model=bnmodels:net"], ["features.1", "bn1"]),  # example_input attribute
    (["--bncheck-model=bnmodels:factory"], ["1"]),  # factory returning (module, example_input), 2 channels
    (["--bncheck-model=bnmodels:module_factory", "--bncheck-input-shape=3,8,8"], ["1"]),
    (["--bncheck-model=bnmodels:Holder.Inner.model", "--bncheck-input-shape=3,8,8"], ["1"]),  # nested attribute
    (["--bncheck-model=bnmodels:Net", "--bncheck-input-shape=3, 8, 8"], ["features.1", "bn1"]),  # a class
], ids=["example_input", "factory_tuple", "factory", "nested_attr", "class"])
def test_model_sources(bnmodels, args, layers):
    result = bnmodels.runpytest(*args, "--collect-only", "-q")
    assert result.ret == 0, result.stderr.str()
    spec = args[0].split("=", 1)[1]
    assert collected_ids(result) == expected_ids(spec, layers)


def _first_input(batch, shape, seed):
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))
    return (batch, *shape), float(x.flatten()[0])


def test_a_spec_with_arguments_is_built_under_the_seed_and_the_header_says_how_to_reproduce(bnmodels):
    bnmodels.makepyfile(test_user="""
        import torch

        def test_weights(bncheck_model):
            torch.manual_seed(5)
            assert torch.equal(bncheck_model.conv.weight, torch.nn.Conv2d(3, 2, 3, bias=False).weight)
    """)
    spec = "bnmodels:Wide(width=2)"
    result = bnmodels.runpytest(f"--bncheck-model={spec}", "--bncheck-input-shape=3,8,8", "--bncheck-seed=5",
                                "test_user.py", "-k", "test_weights or batch_stats")
    assert outcomes_by_id(result) == {"test_user.py::test_weights": "passed",
                                      f"bncheck[{spec}]::batch_stats[bn]": "passed"}
    result.stdout.fnmatch_lines([
        f"bncheck: {spec} on *; input 3,8,8 (--bncheck-input-shape), batch 8, seed 5; 1 BN layers (BatchNorm2d: 1)",
        f"bncheck: reproduce with: pytest '--bncheck-model={spec}' --bncheck-input-shape=3,8,8 --bncheck-seed=5"])


def test_torchvision_shortcut_header_says_where_the_input_shape_came_from(pytester, _lazy_torch_imports):
    result = pytester.runpytest("--bncheck-model=torchvision:resnet18", "--collect-only")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines([
        "bncheck: torchvision:resnet18 on *; input 3,224,224 (torchvision's weights transforms), batch 8, seed 0; "
        "20 BN layers (BatchNorm2d: 20)",
        "bncheck: reproduce with: pytest --bncheck-model=torchvision:resnet18 --bncheck-seed=0"])


@pytest.mark.parametrize("args, inputs", [
    ([], "input 3,160,160 (timm's pretrained_cfg), batch 2"),
    (["--bncheck-input-shape=3,16,16"], "input 3,16,16 (--bncheck-input-shape), batch 2"),  # the user's wins
])
def test_timm_shortcut_takes_its_pretrained_cfg_shape_unless_the_user_gives_one(pytester, _lazy_torch_imports, args,
                                                                                inputs):
    pytest.importorskip("timm")
    spec = "timm:test_efficientnet(num_classes=10)"  # timm's own 13-BN test model
    result = pytester.runpytest(f"--bncheck-model={spec}", "--bncheck-batch-size=2", *args, "--collect-only")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines([f"bncheck: {spec} on *; {inputs}, seed 0; 13 BN layers (BatchNormAct2d: 13)"])


@pytest.mark.parametrize("args, batch, shape, seed", [
    (["--bncheck-input-shape=3,8,8"], 8, (3, 8, 8), 0),  # the defaults: batch 8, seed 0
    (["--bncheck-input-shape=3,6,5", "--bncheck-batch-size=3", "--bncheck-seed=5"], 3, (3, 6, 5), 5),
])
def test_input_shape_batch_size_and_seed_make_the_example_input(bnmodels, args, batch, shape, seed):
    models = load_models()
    result = bnmodels.runpytest("--bncheck-model=bnmodels:recorder", *args, "--collect-only")
    assert result.ret == 0, result.stderr.str()
    assert models.SEEN, "the model never saw an input"
    got_shape, got_value = models.SEEN[0]
    want_shape, want_value = _first_input(batch, shape, seed)
    assert got_shape == want_shape
    assert got_value == pytest.approx(want_value)


def test_seed_changes_the_layers_test_state_but_not_the_ids(bnmodels):
    first = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--collect-only", "-q")
    second = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-seed=3", "--bncheck-batch-size=4",
                                "--collect-only", "-q")
    assert collected_ids(first) == collected_ids(second) == expected_ids("bnmodels:net", ["features.1", "bn1"])


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_device_option_in_header(bnmodels, device):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", f"--bncheck-device={device}", "-k", "eval_output")
    result.stdout.fnmatch_lines([f"bncheck: bnmodels:net on {'cpu' if device == 'cpu' else AUTO_DEVICE}, *"])
    result.assert_outcomes(passed=2)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_device_runs_the_checks_on_the_gpu(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-device=cuda:0")
    result.stdout.fnmatch_lines(["bncheck: bnmodels:net on cuda:0, float32, *"])
    assert result.ret == 0
    assert set(outcomes_by_id(result).values()) == {"passed"}


@pytest.mark.parametrize("dtype, outcome", [
    (None, "failed"),  # the default: the dtype check tries float16 and bfloat16
    ("float16", "passed"),  # only float16, which the layer handles
    ("bfloat16", "failed"),
])
def test_dtype_option_picks_the_dtype_checks_dtype(bnmodels, dtype, outcome):
    args = [f"--bncheck-dtype={dtype}"] if dtype else []
    result = bnmodels.runpytest("--bncheck-model=bnmodels:no_bf16", *args, "-k", "dtype")
    result.stdout.fnmatch_lines([f"bncheck: bnmodels:no_bf16 on *, float32 (dtype check: "
                                 f"{dtype or 'float16, bfloat16'}), *"])
    assert outcomes_by_id(result) == {"bncheck[bnmodels:no_bf16]::dtype[1]": outcome}
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*bfloat16 input, train mode: output differs*"])


@pytest.mark.parametrize("strict, outcome", [(False, "passed"), (True, "failed")])
def test_an_output_in_another_dtype_warns_and_fails_only_under_strict(bnmodels, strict, outcome):
    args = ["--bncheck-strict"] if strict else []
    result = bnmodels.runpytest("--bncheck-model=bnmodels:promotes", *args, "-k", "dtype")
    assert outcomes_by_id(result) == {"bncheck[bnmodels:promotes]::dtype[1]": outcome}
    result.stdout.fnmatch_lines(["*returns float32 for float16 input (its values are right)*"])


TEXTBOOK_SOURCE = (Path(__file__).parents[1] / "planted" / "textbook.py").read_text()


@pytest.mark.parametrize("args, outcome", [([], "passed"), (["--bncheck-torch-conformance"], "failed"),
                                           (["--bncheck-strict"], "failed")])
def test_torch_conformance_warns_by_default_and_fails_when_asked_for(bnmodels, args, outcome):
    """A correct textbook BN raises on an empty batch: a warning naming what torch does, unless conformance is
    asked for."""
    bnmodels.makepyfile(textbook=TEXTBOOK_SOURCE)
    result = bnmodels.runpytest("--bncheck-model=textbook:textbook_net", *args, "-k", "empty_batch")
    assert set(outcomes_by_id(result).values()) == {outcome}
    result.stdout.fnmatch_lines(["*empty batch (0, 4, 6, 6), train mode: raised ValueError*; torch returns an "
                                 "empty output*"])


# --- ini settings ---------------------------------------------------------------------------------------------------

INI = """
[tool.pytest.ini_options]
bncheck_model = ["bnmodels:recorder"]
bncheck_input_shape = "3,6,6"
bncheck_batch_size = "3"
bncheck_device = "cpu"
bncheck_dtype = "bfloat16"
bncheck_seed = "7"
"""


def test_ini_settings(bnmodels):
    bnmodels.makepyprojecttoml(INI)
    models = load_models()
    result = bnmodels.runpytest("--collect-only")
    assert result.ret == 0, result.stderr.str()
    assert selected_ids(result) == expected_ids("bnmodels:recorder", ["bn"])
    result.stdout.fnmatch_lines([f"bncheck: bnmodels:recorder on cpu, float32 (dtype check: bfloat16), torch "
                                 f"{torch.__version__}; *"])
    got_shape, got_value = models.SEEN[0]
    assert (got_shape, pytest.approx(got_value)) == _first_input(3, (3, 6, 6), 7)


def test_command_line_overrides_ini(bnmodels):
    bnmodels.makepyprojecttoml(INI)
    models = load_models()
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-input-shape=3,5,5",
                                "--bncheck-batch-size=2", "--bncheck-seed=4", "--bncheck-dtype=float16",
                                "--collect-only")
    assert result.ret == 0, result.stderr.str()
    assert selected_ids(result) == expected_ids("bnmodels:net", ["features.1", "bn1"])
    result.stdout.fnmatch_lines(["bncheck: bnmodels:net on cpu, float32 (dtype check: float16), *"])
    assert not models.SEEN  # the ini's recorder model was not loaded


def test_command_line_seed_zero_overrides_ini(bnmodels):
    bnmodels.makepyprojecttoml(INI)
    models = load_models()
    result = bnmodels.runpytest("--bncheck-seed=0", "--collect-only", "-q")
    assert result.ret == 0, result.stderr.str()
    got_shape, got_value = models.SEEN[0]
    assert (got_shape, pytest.approx(got_value)) == _first_input(3, (3, 6, 6), 0)


# --- ids: stable across runs, under -k, --lf and xdist --------------------------------------------------------------


def test_k_selects_bncheck_items(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "-k", "running_stats and bn1")
    assert outcomes_by_id(result) == {"bncheck[bnmodels:net]::running_stats[bn1]": "passed"}
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "-k", "features.1 and not dtype and not memory",
                                "--collect-only", "-q")
    assert collected_ids(result) == [f"bncheck[bnmodels:net]::{c}[features.1]" for c in LAYER_CHECKS
                                     if c not in ("dtype", "memory_format")]
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "-m", "bncheck and not bncheck", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_lf_reruns_only_the_failed_items(bnmodels):
    first = bnmodels.runpytest("--bncheck-model=bnmodels:flipped", "--bncheck-model=bnmodels:net", "-k",
                               "stats or lint_")
    failed = {nodeid for nodeid, outcome in outcomes_by_id(first).items() if outcome == "failed"}
    assert failed == {"bncheck[bnmodels:flipped]::running_stats[1]"}
    assert len(outcomes_by_id(first)) == 3 * 2 + 2 * (1 + len(LINTS))  # batch_stats, running_stats; model_running_stats
    second = bnmodels.runpytest("--bncheck-model=bnmodels:flipped", "--bncheck-model=bnmodels:net", "--lf")
    assert outcomes_by_id(second) == {"bncheck[bnmodels:flipped]::running_stats[1]": "failed"}
    second.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*"])


def test_ids_are_identical_serially_and_under_xdist(bnmodels):
    """Serial collection, xdist collection and the ids xdist's workers run all agree (xdist itself also fails
    the run when its two workers collect different ids)."""
    args = ["--bncheck-model=bnmodels:net", "--bncheck-model=bnmodels:flipped"]
    want = expected_ids("bnmodels:net", ["features.1", "bn1"]) + expected_ids("bnmodels:flipped", ["1"])
    serial = bnmodels.runpytest(*args, "--collect-only", "-q")
    assert collected_ids(serial) == want
    xdist_collect = bnmodels.runpytest(*args, "-n", "2", "--collect-only", "-q")
    assert collected_ids(xdist_collect) == want
    # A real distributed run: two fresh worker processes each load the models and collect.
    run = bnmodels.runpytest(*args, "-n", "2", "-v", "-p", "no:randomly")
    ran = re.findall(r"^\[gw\d\] \[\s*\d+%\] (PASSED|FAILED|SKIPPED) (\S+)", run.stdout.str(), re.M)
    assert sorted(nodeid for _, nodeid in ran) == sorted(want)
    assert "different tests were collected" not in run.stdout.str().lower()
    assert {nodeid for outcome, nodeid in ran if outcome == "FAILED"} == {
        "bncheck[bnmodels:flipped]::running_stats[1]"}
    run.stdout.fnmatch_lines(["*bncheck summary*",
                              f"bncheck[bnmodels:flipped] 1: {len(LAYER_CHECKS) - 2} passed, 1 failed, 1 skipped"])
    assert run.ret == pytest.ExitCode.TESTS_FAILED
    # the controller runs no item: it names the models and builds no plan
    run.stdout.fnmatch_lines(["bncheck: bnmodels:net on cpu, float32 (dtype check: float16, bfloat16), torch *; "
                              "2 BN layers (BatchNorm1d: 1, BatchNorm2d: 1); checked in the workers"])


def test_an_xdist_worker_gives_torch_its_share_of_the_cores(bnmodels):
    bnmodels.makepyfile(test_threads="""
        import os, torch

        def test_threads():
            assert torch.get_num_threads() == max(1, os.cpu_count() // 2)
    """)
    result = bnmodels.runpytest_subprocess("--bncheck-model=bnmodels:net", "test_threads.py", "-n", "2", "-v",
                                           "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*PASSED test_threads.py::test_threads*"])
    assert result.ret == 0


# --- broken BN, no BN, lints ------------------------------------------------------------------------------------------


def test_broken_bn_fails_its_items_with_a_readable_message(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:flipped")
    outcomes = outcomes_by_id(result)
    assert list(outcomes) == expected_ids("bnmodels:flipped", ["1"])
    assert {nodeid for nodeid, outcome in outcomes.items() if outcome == "failed"} == {
        "bncheck[bnmodels:flipped]::running_stats[1]"}
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    [report] = [r for r in result.reprec.getfailures() if r.when == "call"]
    message = report.longreprtext
    assert "running_mean" in message and "momentum convention flipped" in message
    assert "Traceback" not in result.stdout.str() and "def runtest" not in message and "raise " not in message
    result.stdout.fnmatch_lines([
        "*= FAILURES =*",
        "*_ bncheck[[]bnmodels:flipped[]]::running_stats[[]1[]] _*",
        "*momentum convention flipped*",
        "*bncheck summary*",
        f"bncheck[bnmodels:flipped] 1: {len(LAYER_CHECKS) - 2} passed, 1 failed, 1 skipped",  # large_eps skips
        f"bncheck[bnmodels:flipped] model: {len(MODEL_CHECKS) + len(LINTS)} passed, 0 failed",
        "FAILED bncheck[[]bnmodels:flipped[]]::running_stats[[]1[]]*",
    ])


def test_model_without_bn_runs_the_model_checks_that_need_none(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:nobn", "-rs")
    assert outcomes_by_id(result) == {"bncheck[bnmodels:nobn]::no_batchnorm": "skipped",
                                      **{f"bncheck[bnmodels:nobn]::model_{check}": "passed"
                                         for check in ("eval_single_sample", "eval_state", "state_dict_roundtrip")}}
    result.stdout.fnmatch_lines([
        "bncheck: bnmodels:nobn on *; 0 BN layers (none); no BN layer found: only the model checks that need none run",
        "bncheck[bnmodels:nobn] model: 3 passed, 0 failed, 1 skipped",
        "SKIPPED [[]1[]] bncheck[[]bnmodels:nobn[]]::no_batchnorm: bnmodels:nobn: no BatchNorm layer found*",
    ])


def test_statistics_kept_as_plain_attributes_are_found_and_fail(bnmodels):
    """A textbook BN (self.running_mean = torch.zeros(C)) is a BN, a broken one: never 'no BatchNorm found'."""
    result = bnmodels.runpytest("--bncheck-model=bnmodels:textbook")
    failed = {nodeid for nodeid, outcome in outcomes_by_id(result).items() if outcome == "failed"}
    assert failed == {"bncheck[bnmodels:textbook]::statistics_registered[1]",
                      "bncheck[bnmodels:textbook]::model_state_dict_roundtrip"}
    result.stdout.fnmatch_lines(["*running_mean and running_var are plain tensor attributes, not registered buffers*"])


LINT_MODELS = ["--bncheck-model=bnmodels:biased", "--bncheck-model=bnmodels:keras",
               "--bncheck-model=bnmodels:frozen_affine", "--bncheck-model=bnmodels:net"]
FINDINGS = {  # the lint item that must find something, and a phrase of its message
    "bncheck[bnmodels:biased]::lint_redundant_bias": "bias=False",
    "bncheck[bnmodels:keras]::lint_keras_momentum": "momentum=0.99",
    "bncheck[bnmodels:frozen_affine]::lint_frozen_affine": "requires_grad does not freeze BN",
}


def test_lints_warn_bncheck_warnings_by_default(bnmodels):
    result = bnmodels.runpytest(*LINT_MODELS, "-k", "lint_")
    outcomes = outcomes_by_id(result)
    assert len(outcomes) == 4 * len(LINTS) and set(outcomes.values()) == {"passed"}
    warned = {}
    for call in result.reprec.getcalls("pytest_warning_recorded"):
        # In-process runs also record pytest's own "already imported, cannot be rewritten" for bncheck itself.
        if call.warning_message.category.__name__ == "BNCheckWarning":
            warned.setdefault(call.nodeid, []).append(call.warning_message)
    assert set(warned) == set(FINDINGS)
    for nodeid, phrase in FINDINGS.items():
        [w] = warned[nodeid]
        assert w.category.__module__ == "bncheck" and w.category.__name__ == "BNCheckWarning"
        assert phrase in str(w.message)
    result.stdout.fnmatch_lines(["*warnings summary*", "*BNCheckWarning*"])


@pytest.mark.parametrize("how", ["--bncheck-strict", "ini", "-W error::bncheck.BNCheckWarning"])
def test_lints_fail_under_strict_or_warnings_as_errors(bnmodels, how):
    args = list(LINT_MODELS) + ["-k", "lint_"]
    if how == "ini":
        bnmodels.makepyprojecttoml("[tool.pytest.ini_options]\nbncheck_strict = true\n")
    else:
        args += how.split(" ")
    result = bnmodels.runpytest(*args)
    outcomes = outcomes_by_id(result)
    assert len(outcomes) == 4 * len(LINTS)
    assert {nodeid for nodeid, outcome in outcomes.items() if outcome == "failed"} == set(FINDINGS)
    failures = {r.nodeid: r.longreprtext for r in result.reprec.getfailures()}
    for nodeid, phrase in FINDINGS.items():
        assert phrase in failures[nodeid]
        if how != "-W error::bncheck.BNCheckWarning":  # a BNCheckError: its message, not a traceback
            assert "failed under strict" in failures[nodeid]
            assert "Traceback" not in failures[nodeid] and "raise " not in failures[nodeid]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_examples_seed_cnn_passes(pytester, _lazy_torch_imports):
    result = pytester.runpytest("--bncheck-model=bncheck.examples:seed_cnn")
    result.stdout.fnmatch_lines([
        f"bncheck: bncheck.examples:seed_cnn on {AUTO_DEVICE}, float32 (dtype check: float16, bfloat16), torch "
        f"{torch.__version__}; "
        f"input 1,28,28 (the model's example_input), batch 8, seed 0; 2 BN layers (BatchNorm1d: 1, BatchNorm2d: 1)"])
    outcomes = outcomes_by_id(result)
    assert list(outcomes) == expected_ids("bncheck.examples:seed_cnn", ["3", "10"])
    assert "failed" not in outcomes.values()
    assert result.ret == 0


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_profile_sums_every_items_passes_per_model_and_by_check(bnmodels, xdist):
    result = bnmodels.runpytest_subprocess("--bncheck-model=bnmodels:net", "--bncheck-profile", *xdist)
    assert result.ret == 0, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines([
        "bncheck[[]bnmodels:net[]] passes: * whole-model forward passes, * backward passes, * BN-layer forwards",
        "bncheck[[]bnmodels:net[]] whole-model forward / backward passes by check: model_eval_single_sample *"])


VGG = ["--bncheck-model=torchvision.models:vgg11_bn", "--bncheck-input-shape=3,32,32"]


def test_vgg11_bn_bias_lint_warns_and_fails_under_strict(pytester, _lazy_torch_imports):
    """torchvision's vgg11_bn: each of its 8 conv layers has a bias feeding a BN (the whole run passes, checked in
    tests/run/test_performance.py for resnet18; here only the lint items, which is where vgg11_bn differs)."""
    result = pytester.runpytest(*VGG, "-k", "lint_")
    assert set(outcomes_by_id(result).values()) == {"passed"} and result.ret == 0
    warned = [c.warning_message for c in result.reprec.getcalls("pytest_warning_recorded")
              if c.warning_message.category.__name__ == "BNCheckWarning"]
    assert len(warned) == 8 and all("bias=False" in str(w.message) for w in warned)
    strict = pytester.runpytest(*VGG, "-k", "lint_", "--bncheck-strict")
    assert {n for n, o in outcomes_by_id(strict).items() if o == "failed"} == {
        "bncheck[torchvision.models:vgg11_bn]::lint_redundant_bias"}
    assert strict.ret == pytest.ExitCode.TESTS_FAILED

# --- the user's model is left as it was -------------------------------------------------------------------------------

UNCHANGED = ["flipped", "eval_frozen", "frozen_affine", "net", "biased", "keras"]


def test_users_models_are_unchanged_by_a_whole_run(bnmodels):
    models = load_models()
    objects = {name: getattr(models, name) for name in UNCHANGED}
    before = {name: Snapshot.of(model) for name, model in objects.items()}
    assert not models.eval_frozen.training and not models.eval_frozen[0].weight.requires_grad
    reprec = bnmodels.inline_run(*(f"--bncheck-model=bnmodels:{name}" for name in UNCHANGED))
    passed, skipped, failed = reprec.listoutcomes()
    assert {r.nodeid for r in failed} == {"bncheck[bnmodels:flipped]::running_stats[1]"}  # the run did run
    assert len(passed) + len(skipped) + len(failed) == sum(len(expected_ids(n, ["1"])) for n in UNCHANGED) + len(
        LAYER_CHECKS)  # net has two BN layers
    for name, model in objects.items():
        assert getattr(load_models(), name) is model
        assert before[name].differences(model) == [], name
    assert not models.eval_frozen.training and not models.eval_frozen[0].weight.requires_grad
    assert models.eval_frozen[1].weight.requires_grad and not models.frozen_affine[1].weight.requires_grad
    # The proof can fail: what a check does to a model, done to the user's model, is seen.
    models.eval_frozen.train()
    models.flipped(models.flipped.example_input)
    assert before["eval_frozen"].differences(models.eval_frozen)
    assert any("running_mean" in d for d in before["flipped"].differences(models.flipped))


# --- bad input: one-line usage errors -----------------------------------------------------------------------------

BAD_INPUT = [
    pytest.param(["--bncheck-model=bnmodels"], ["--bncheck-model=bnmodels", "module.path:attribute"],
                 id="no_colon"),
    pytest.param(["--bncheck-model=no_such_module_xyz:net"], ["cannot import 'no_such_module_xyz'"],
                 id="module_not_found"),
    pytest.param(["--bncheck-model=broken_import:net"], ["importing 'broken_import' raised ZeroDivisionError"],
                 id="module_raises_on_import"),
    pytest.param(["--bncheck-model=bnmodels:missing"], ["bnmodels has no attribute 'missing'"],
                 id="missing_attribute"),
    pytest.param(["--bncheck-model=bnmodels:Holder.Missing"], ["no attribute", "Holder.Missing"],
                 id="missing_nested_attribute"),
    pytest.param(["--bncheck-model=bnmodels:not_a_model"], ["int is neither an nn.Module nor a factory"],
                 id="not_a_module"),
    pytest.param(["--bncheck-model=bnmodels:raising_factory"],
                 ["the factory raised RuntimeError: cannot build the model"], id="factory_raises"),
    pytest.param(["--bncheck-model=bnmodels:returns_int"], ["the factory returned int"], id="factory_returns_int"),
    pytest.param(["--bncheck-model=bnmodels:plain"], ["no input shape", "--bncheck-input-shape=C,H,W"],
                 id="no_input_shape"),
    pytest.param(["--bncheck-model=bnmodels:plain", "--bncheck-input-shape=5,8,8"],
                 ["bnmodels:plain: the model rejected the example input (8, 5, 8, 8): RuntimeError"],
                 id="input_rejected"),
    pytest.param(["--bncheck-model=bnmodels:factory", "--bncheck-input-shape=3,8,8"],
                 ["rejected the example input"], id="shape_overrides_factory_input"),
    pytest.param(["--bncheck-model=bnmodels:net", "--bncheck-device=cuda"], ["--bncheck-device=cuda", "no CUDA GPU"],
                 id="cuda_without_gpu", marks=pytest.mark.skipif(HAS_CUDA, reason="there is a GPU")),
    pytest.param(["--bncheck-model=bnmodels:net", "--bncheck-device=cuda:7"], ["--bncheck-device=cuda:7"],
                 id="missing_gpu_index"),
    pytest.param(["--bncheck-model=bnmodels:net", "--bncheck-device=tpu9"], ["--bncheck-device=tpu9"],
                 id="unknown_device"),
    pytest.param(["--bncheck-model=bnmodels:plain", "--bncheck-input-shape=3,x,8"],
                 ["--bncheck-input-shape=3,x,8", "positive integers"], id="shape_not_integers"),
    pytest.param(["--bncheck-model=bnmodels:plain", "--bncheck-input-shape=0,8,8"],
                 ["--bncheck-input-shape=0,8,8"], id="shape_not_positive"),
    pytest.param(["--bncheck-model=bnmodels:net", "--bncheck-dtype=int8"], ["--bncheck-dtype=int8", "float16"],
                 id="unknown_dtype"),
    pytest.param(["--bncheck-model=bnmodels:net", "--bncheck-batch-size=1"], ["--bncheck-batch-size", "at least 2"],
                 id="batch_size_1"),
    pytest.param(["--bncheck-model=bnmodels:net", "--bncheck-batch-size=0"], ["--bncheck-batch-size", "at least 2"],
                 id="batch_size_0"),
    pytest.param(["--bncheck-model=bnmodels:Wide"], ["--bncheck-model=bnmodels:Wide: Wide() needs arguments (width): "
                                                     "name them in the spec, e.g. 'bnmodels:Wide(width=...)'"],
                 id="class_needs_arguments"),
    pytest.param(["--bncheck-model=bnmodels:Wide(width=__import__('os'))"],
                 ["width=__import__('os') is not a literal"], id="argument_not_a_literal"),
    pytest.param(["--bncheck-model=bnmodels:Wide(4)"], ["name every argument, as key=literal"],
                 id="positional_argument"),
    pytest.param(["--bncheck-model=torchvision:resnet181"],
                 ["--bncheck-model=torchvision:resnet181: torchvision has no model 'resnet181'; did you mean resnet18, "
                  "resnet101"], id="unknown_torchvision_model"),
    pytest.param(["--bncheck-model=bnmodels:net", "--bncheck-model=bnmodels:raiser"],
                 ["ERROR: bnmodels:raiser: the model rejected the example input (4, 3, 8, 8): RuntimeError: boom"],
                 id="forward_raises"),
]


@pytest.mark.parametrize("args, fragments", BAD_INPUT)
def test_bad_input_is_a_one_line_usage_error(bnmodels, args, fragments):
    bnmodels.makepyfile(broken_import="1 / 0\n")
    assert_usage_error(bnmodels.runpytest(*args), *fragments)


def test_a_model_that_rejects_its_input_is_one_usage_error_under_xdist_too(bnmodels):
    """The controller builds no plan, but runs the model once: the workers never start on a broken model."""
    result = bnmodels.runpytest_subprocess("--bncheck-model=bnmodels:raiser", "-n", "2", "-p", "no:cacheprovider")
    assert_usage_error(result, "bnmodels:raiser: the model rejected the example input (4, 3, 8, 8): RuntimeError: boom")


def test_bad_ini_integer_is_a_one_line_usage_error(bnmodels):
    bnmodels.makepyprojecttoml('[tool.pytest.ini_options]\nbncheck_batch_size = "eight"\n')
    assert_usage_error(bnmodels.runpytest("--bncheck-model=bnmodels:net"), "bncheck_batch_size")


def test_usage_error_in_a_real_process(bnmodels):
    """In a fresh interpreter (plugin found through its entry point): exit code 4, one line, no traceback."""
    result = bnmodels.runpytest_subprocess("--bncheck-model=bnmodels:raising_factory", "-p", "no:cacheprovider")
    assert_usage_error(result, "--bncheck-model=bnmodels:raising_factory: the factory raised RuntimeError: "
                               "cannot build the model")
    assert "second line" not in result.stderr.str()


def test_model_that_needs_targets_in_train_mode_is_checked_from_eval_mode(bnmodels):
    """A detector-like model: the BN layer's input is captured in eval mode (said in the header), its checks
    run, per-image outputs are compared per image, the lint still sees the bias, and the model items that must
    train the whole model skip with the model's own reason."""
    result = bnmodels.runpytest("--bncheck-model=bnmodels:detector", "-rs")
    outcomes = outcomes_by_id(result)
    spec = "bncheck[bnmodels:detector]"
    assert {i for i, o in outcomes.items() if o == "failed"} == set()
    assert outcomes[f"{spec}::model_train_vs_eval"] == outcomes[f"{spec}::model_state_dict_roundtrip"] == "skipped"
    assert outcomes[f"{spec}::model_eval_single_sample"] == outcomes[f"{spec}::batch_stats[body.1]"] == "passed"
    result.stdout.fnmatch_lines([
        "bncheck: bnmodels:detector on *; 1 BN layers (BatchNorm2d: 1); inputs captured in eval mode (train mode: "
        "AssertionError: targets should not be none when in training mode)",
        "SKIPPED * bncheck[[]bnmodels:detector[]]::model_train_vs_eval: bnmodels:detector: the model does not run "
        "in train mode on the example input (AssertionError: targets should not be none*",
    ])
    warned = [str(c.warning_message.message) for c in result.reprec.getcalls("pytest_warning_recorded")]
    assert any("body.0 (Conv2d) has a bias whose output feeds body.1" in w for w in warned), warned
