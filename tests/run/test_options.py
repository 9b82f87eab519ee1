"""One table of settings per concern (bncheck.run.options: OPTIONS for the checks, BENCH_OPTIONS for the benchmarks)
feeds every front end: the plugin's flags and ini keys, the command line's flags; a bad value is named by the flag
the user typed."""

import json

import pytest
import torch
from plugin_runs import assert_usage_error, collected_ids, expected_ids

from bncheck.bench.cases import DEFAULT_MIN_RUN_TIME, DEFAULT_WARMUP, case_name
from bncheck.bench.workloads import MEMORY_FORMATS, MODES
from bncheck.core.errors import BNCheckUsageError
from bncheck.frontends.cli import main
from bncheck.run.options import BENCH_OPTIONS, OPTIONS
from bncheck.run.settings import BenchSettings, Settings, bench_settings_from, settings_from


@pytest.mark.parametrize("table, prefix, command", [(OPTIONS, "bncheck", "check"),
                                                    (BENCH_OPTIONS, "bncheck-bench", "bench")], ids=["checks", "bench"])
def test_every_option_is_a_plugin_flag_an_ini_key_and_a_cli_flag(pytester, capsys, table, prefix, command):
    help_text = pytester.runpytest("--help").stdout.str()
    with pytest.raises(SystemExit):
        main([command, "--help"])
    cli_help = capsys.readouterr().out
    for option in table:
        assert f"--{prefix}-{option.dashed()}" in help_text, option.name
        assert f"{prefix.replace('-', '_')}_{option.name} " in help_text, option.name
        assert f"--{option.dashed()}" in cli_help, option.name


def test_settings_parse_text_take_defaults_and_name_the_bad_option():
    assert settings_from({}) == Settings(device=settings_from({}).device)
    given = settings_from({"input_shape": "3,8,8", "batch_size": "4", "seed": "0", "dtype": "bfloat16",
                           "device": "cpu", "strict": True})
    assert given == Settings(input_shape=(3, 8, 8), batch_size=4, seed=0, dtype=(torch.bfloat16,), strict=True)
    for name, value in (("batch_size", "1"), ("batch_size", "eight"), ("seed", "x"), ("dtype", "int8"),
                        ("input_shape", "3,x"), ("device", "tpu9"), ("data_root", "/nowhere")):
        with pytest.raises(BNCheckUsageError) as info:
            settings_from({name: value})
        assert info.value.field == name and info.value.flagged("--flag").startswith(f"--flag={value}: ")
    with pytest.raises(BNCheckUsageError, match="batch_size=1: must be at least 2"):
        Settings(batch_size=1)


@pytest.mark.parametrize("where, args, fragment", [
    ("command line", ["--bncheck-seed=x"], "--bncheck-seed=x: expected an integer"),
    ("ini file", [], "bncheck_seed=x: expected an integer"),
])
def test_the_plugin_names_the_flag_or_the_ini_key_the_value_came_from(bnmodels, where, args, fragment):
    if not args:
        bnmodels.makepyprojecttoml('[tool.pytest.ini_options]\nbncheck_seed = "x"\n')
    assert_usage_error(bnmodels.runpytest("--bncheck-model=bnmodels:net", *args), fragment)


@pytest.mark.usefixtures("cli_models")
def test_the_cli_reaches_the_options_the_plugin_has(capsys):
    assert main(["check", "cli_models:flipped", "--seed", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: --seed=x: expected an integer")
    assert main(["check", "cli_models:flipped", "--data-root", "/nowhere"]) == 2
    assert capsys.readouterr().err.startswith("error: --data-root=/nowhere: Fashion-MNIST not found")


# ------------------------------------------------------------------------------------------------ benchmark knobs

def test_the_bench_table_names_its_own_options_and_bncheck_benchs_defaults():
    assert not {o.name for o in OPTIONS} & {o.name for o in BENCH_OPTIONS}  # a bad value's field names one flag
    # the help of the torch-free table states bncheck.bench's own choices and defaults
    helps = {option.name: option.help for option in BENCH_OPTIONS}
    assert ",".join(MODES) in helps["modes"] and ",".join(MEMORY_FORMATS) in helps["memory_format"]
    assert f"default {DEFAULT_MIN_RUN_TIME[False]:g}; quick {DEFAULT_MIN_RUN_TIME[True]:g}" in helps["min_run_time"]
    assert f"default {DEFAULT_WARMUP[False]}; quick {DEFAULT_WARMUP[True]}" in helps["warmup"]


def test_bench_settings_parse_text_take_defaults_and_name_the_bad_option():
    assert bench_settings_from({}) == BenchSettings()
    given = bench_settings_from({"modes": "forward_eval, backward", "memory_format": "channels_last",
                                 "layers": "bn1,features.1", "min_run_time": "0.5", "warmup": "0", "quick": True,
                                 "no_cudnn_benchmark": True, "threads": "1"})
    assert given == BenchSettings(("forward_eval", "backward"), ("channels_last",), ("bn1", "features.1"), 0.5, 0,
                                  True, True, 1)
    assert given.case_options()["cudnn_benchmark"] is False and given.case_options()["threads"] == 1
    assert BenchSettings().threads is None  # default: torch's current count, left as it is
    assert bench_settings_from({"layers": "none"}).layers == ()  # the model only
    assert bench_settings_from({"layers": "all"}).layers is None
    for name, value in (("modes", "sideways"), ("modes", ","), ("memory_format", "nhwc"), ("min_run_time", "0"),
                        ("min_run_time", "soon"), ("warmup", "-1"), ("warmup", "many"), ("threads", "0"),
                        ("threads", "all")):
        with pytest.raises(BNCheckUsageError) as info:
            bench_settings_from({name: value})
        assert info.value.field == name and info.value.flagged("--flag").startswith(f"--flag={value}: ")


NET_CHECK_IDS = expected_ids("bnmodels:net", ["features.1", "bn1"])


def _net_bench_ids(modes, targets, formats):
    return [f"bncheck[bnmodels:net]::{case_name(mode, target, torch.float32, fmt)}"
            for target in targets for fmt in formats for mode in modes]


def test_bench_knobs_given_to_the_plugin_choose_the_benchmark_items(bnmodels):
    """--bncheck-bench-<name> (or the ini key bncheck_bench_<name>) restricts what --bncheck-benchmark adds."""
    run = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-benchmark", "--collect-only", "-q",
                             "--bncheck-bench-modes=forward_eval", "--bncheck-bench-memory-format=contiguous",
                             "--bncheck-bench-layers=bn1")
    assert collected_ids(run) == NET_CHECK_IDS + _net_bench_ids(["forward_eval"], ["model", "bn1"], ["contiguous"])

    bnmodels.makeini("[pytest]\nbncheck_model = bnmodels:net\nbncheck_benchmark = true\n"
                     "bncheck_bench_modes = backward\nbncheck_bench_layers = none\n")
    run = bnmodels.runpytest("--collect-only", "-q", "-k", "bench_")
    assert collected_ids(run) == _net_bench_ids(["backward"], ["model"], ["contiguous", "channels_last"])


def test_bench_knobs_given_to_the_plugin_reach_the_measurement(bnmodels, one_thread, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # else pytest-benchmark disables itself inside
    out = bnmodels.path / "bench.json"
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-benchmark", "-k", "bench_",
                                "--bncheck-bench-modes=forward_eval", "--bncheck-bench-layers=none",
                                "--bncheck-bench-memory-format=contiguous", "--bncheck-bench-quick",
                                "--bncheck-bench-no-cudnn-benchmark", "--bncheck-bench-threads=2",
                                f"--benchmark-json={out}", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["fullname"] == _net_bench_ids(["forward_eval"], ["model"], ["contiguous"])[0]
    assert bench["extra_info"]["cudnn_benchmark"] is False
    assert bench["extra_info"]["num_threads"] == 2 and torch.get_num_threads() == 1  # timed on 2, restored

    bnmodels.makeini("[pytest]\nbncheck_bench_threads = 0\n")
    assert_usage_error(bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-benchmark"),
                       "bncheck_bench_threads=0: must be at least 1")


@pytest.mark.parametrize("args, ini, fragment", [
    (["--bncheck-bench-modes=sideways"], "", "--bncheck-bench-modes=sideways: mode 'sideways': expected one of"),
    (["--bncheck-bench-memory-format=nhwc"], "", "--bncheck-bench-memory-format=nhwc: memory format 'nhwc'"),
    (["--bncheck-bench-layers=bn1,nope"], "", "--bncheck-bench-layers=bn1,nope: no BN layer named 'nope'"),
    ([], "bncheck_bench_min_run_time = 0", "bncheck_bench_min_run_time=0: must be greater than 0"),
    ([], "bncheck_bench_warmup = many", "bncheck_bench_warmup=many: expected an integer"),
])
def test_a_bad_bench_knob_is_a_usage_error_naming_the_flag_or_ini_key(bnmodels, args, ini, fragment):
    if ini:
        bnmodels.makeini(f"[pytest]\n{ini}\n")
    assert_usage_error(bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-benchmark", *args), fragment)


def test_the_bench_cli_names_a_bad_knob_by_its_flag(capsys):
    for argv, fragment in ((["--modes", "sideways"], "error: --modes=sideways: mode 'sideways'"),
                           (["--min-run-time", "0"], "error: --min-run-time=0: must be greater than 0"),
                           (["--threads", "0"], "error: --threads=0: must be at least 1"),
                           (["--layers", "nope"], "error: --layers=nope: no BN layer named 'nope'"),
                           (["--seed", "x"], "error: --seed=x: expected an integer"),
                           (["--batch-size", "1"], "error: --batch-size=1: must be at least 2")):
        assert main(["bench", "bncheck.examples:seed_cnn", "--quick", *argv]) == 2, argv
        assert capsys.readouterr().err.splitlines()[-1].startswith(fragment), argv
