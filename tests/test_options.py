"""One table of settings (bncheck.run.options) feeds every front end: the plugin's flags and ini keys, the command
line's flags; a bad value is named by the flag the user typed."""

import pytest
import torch
from test_cli import cli_models  # noqa: F401 - a fixture
from test_plugin import assert_usage_error

from bncheck.core.errors import BNCheckUsageError
from bncheck.frontends.cli import main
from bncheck.run.options import OPTIONS
from bncheck.run.settings import Settings, settings_from


def test_every_option_is_a_plugin_flag_an_ini_key_and_a_cli_flag(pytester, capsys):
    help_text = pytester.runpytest("--help").stdout.str()
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    cli_help = capsys.readouterr().out
    for option in OPTIONS:
        assert f"--bncheck-{option.dashed()}" in help_text, option.name
        assert f"bncheck_{option.name} " in help_text, option.name
        assert f"--{option.dashed()}" in cli_help, option.name


def test_settings_parse_text_take_defaults_and_name_the_bad_option():
    assert settings_from({}) == Settings(device=settings_from({}).device)
    given = settings_from({"input_shape": "3,8,8", "batch_size": "4", "seed": "0", "dtype": "bfloat16",
                           "device": "cpu", "strict": True})
    assert given == Settings(input_shape=(3, 8, 8), batch_size=4, seed=0, dtype=torch.bfloat16, strict=True)
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
