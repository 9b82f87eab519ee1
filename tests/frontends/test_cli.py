"""`python -m bncheck check SPEC`: the checks without pytest, with errors that name this CLI's own options."""

import pytest
import torch

from bncheck.__main__ import main
from bncheck.checks import LAYER_CHECKS
from bncheck.checks.lints import LINTS
from bncheck.checks.model import MODEL_CHECKS


def _statuses(out: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[0] for line in out.splitlines()
            if line[:4] in ("PASS", "FAIL", "SKIP", "WARN")}


def test_check_runs_every_check_and_passes_the_seed_cnn(capsys):
    assert main(["check", "bncheck.examples:seed_cnn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bncheck: bncheck.examples:seed_cnn on ")
    statuses = _statuses(out)
    assert len(statuses) == 2 * len(LAYER_CHECKS) + len(MODEL_CHECKS) + len(LINTS)
    assert set(statuses.values()) == {"PASS", "SKIP"}
    assert out.rstrip().endswith("all checks passed")


def test_a_broken_layer_fails_with_its_message_and_exit_code_1(cli_models, capsys):
    assert main(["check", "cli_models:flipped"]) == 1
    out = capsys.readouterr().out
    assert _statuses(out)["running_stats[1]"] == "FAIL"
    assert "momentum convention flipped" in out


@pytest.mark.filterwarnings("ignore:some library chatter")
def test_only_lint_findings_turn_a_pass_into_warn(cli_models, capsys):
    assert main(["check", "cli_models:noisy"]) == 0
    assert "WARN" not in _statuses(capsys.readouterr().out).values()  # a library's UserWarning is not a finding
    assert main(["check", "cli_models:biased"]) == 0
    statuses = _statuses(capsys.readouterr().out)
    assert statuses["lint_redundant_bias"] == "WARN"
    assert main(["check", "cli_models:biased", "--strict"]) == 1


@pytest.mark.parametrize("args, message", [
    (["cli_models:flipped", "--batch-size", "1"], "error: --batch-size=1: must be at least 2"),
    (["cli_models:flipped", "--dtype", "int8"], "error: --dtype=int8: expected one of"),
    (["cli_models:flipped", "--device", "tpu9"], "error: --device=tpu9: "),
    (["cli_models:plain"], "error: cli_models:plain: no input shape: pass --input-shape C,H,W"),
    (["cli_models:plain", "--input-shape", "3,x"], "error: --input-shape=3,x: expected positive integers"),
    (["no_such_module_xyz:net"], "error: no_such_module_xyz:net: cannot import 'no_such_module_xyz'"),
    pytest.param(["cli_models:flipped", "--device", "cuda"], "error: --device=cuda: no CUDA GPU is available "
                 "(torch.cuda.is_available() is False); use cpu or auto",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")),
])
def test_usage_errors_are_one_line_and_name_the_cli_options(cli_models, capsys, args, message):
    assert main(["check", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1, captured.err
    assert "--bncheck-" not in captured.err
