"""`python -m bncheck check SPEC`: the checks without pytest, with errors that name this CLI's own options."""

import sys

import pytest
import torch

from bncheck.__main__ import main
from bncheck.checks import LAYER_CHECKS, MODEL_CHECKS
from bncheck.checks.lints import LINTS


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
    (["cli_models:flipped", "--dtype", "int8"], "error: --dtype=int8: expected float16, bfloat16 or float16,bfloat16"),
    (["cli_models:flipped", "--device", "tpu9"], "error: --device=tpu9: "),
    (["cli_models:plain"], "error: cli_models:plain: no input shape: pass --input-shape C,H,W"),
    (["cli_models:plain", "--input-shape", "3,x"], "error: --input-shape=3,x: expected positive integers"),
    (["no_such_module_xyz:net"], "error: no_such_module_xyz:net: cannot import 'no_such_module_xyz'"),
    (["cli_models:Wide"], "error: cli_models:Wide: Wide() needs arguments (width): name them in the spec, e.g. "
                          "'cli_models:Wide(width=...)' (literal keyword values), or point at a zero-argument factory"),
    (["cli_models:Wide(width=__import__('os'))"], "error: cli_models:Wide(width=__import__('os')): "
                                                  "width=__import__('os') is not a literal"),
    (["cli_models:raiser"], "error: cli_models:raiser: the model rejected the example input (4, 3, 8, 8): "
                            "RuntimeError: boom"),
    (["torchvision:resnet181"], "error: torchvision:resnet181: torchvision has no model 'resnet181'; did you mean "
                                "resnet18, resnet101"),
    # a shortcut's stated shape gives way to the user's (a shape resnet18 rejects: the quickest proof)
    (["torchvision:resnet18", "--input-shape", "5,8,8"], "error: torchvision:resnet18: the model rejected the "
                                                         "example input (8, 5, 8, 8): RuntimeError"),
    pytest.param(["cli_models:flipped", "--device", "cuda"], "error: --device=cuda: no CUDA GPU is available "
                 "(torch.cuda.is_available() is False); use cpu or auto",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")),
])
def test_usage_errors_are_one_line_and_name_the_cli_options(cli_models, capsys, args, message):
    assert main(["check", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1, captured.err
    assert "--bncheck-" not in captured.err


def test_a_spec_with_arguments_runs_and_the_output_says_how_to_reproduce(cli_models, capsys):
    assert main(["check", "cli_models:Wide(width=2)", "--input-shape", "3,8,8", "--seed", "3", "--strict"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bncheck: cli_models:Wide(width=2) on ")
    assert "; input 3,8,8 (--input-shape), batch 8, seed 3; 1 BN layers" in lines[0]
    assert lines[-2:] == ["bncheck: reproduce with: python -m bncheck check 'cli_models:Wide(width=2)' "
                          "--input-shape 3,8,8 --strict --seed 3", "all checks passed"]


def test_construction_follows_the_seed(cli_models, monkeypatch):
    """The model the CLI checks is built under --seed: the weights torch.manual_seed(seed) gives."""
    import bncheck.frontends.cli as cli

    built = []
    monkeypatch.setattr(cli, "run_plan", lambda plan: built.append(plan.model) or _Report())
    for seed in ("4", "4", "5"):
        assert main(["check", "cli_models:Wide(width=2)", "--input-shape", "3,8,8", "--seed", seed]) == 0
    torch.manual_seed(4)
    assert torch.equal(built[0].conv.weight, torch.nn.Conv2d(3, 2, 3, bias=False).weight)
    assert torch.equal(built[0].conv.weight, built[1].conv.weight)
    assert not torch.equal(built[0].conv.weight, built[2].conv.weight)


class _Report:
    failures, ok = [], True


def test_timm_not_installed_is_a_one_line_error_that_says_pip_install_timm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert main(["check", "timm:efficientnet_b0"]) == 2
    assert capsys.readouterr().err == ("error: timm:efficientnet_b0 needs timm, which is not installed: "
                                       "pip install 'bncheck[zoo]'\n")
