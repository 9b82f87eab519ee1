"""The package's architecture, enforced: layers import only downwards, loading the plugin imports no torch, and
every documented path keeps working."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bncheck

PACKAGE = Path(bncheck.__file__).parent
# Each subpackage's layer: a module may import its own subpackage and lower layers, never a sibling or above.
LAYERS = {"core": 0, "checks": 1, "training": 2, "syncbn": 2, "bench": 2, "testing": 2, "run": 3, "frontends": 4}
FACADES = {"__init__", "__main__", "data", "examples", "strategies"}  # documented paths over the layers


def _imports(path: Path) -> set[str]:
    """Every bncheck module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bncheck"):
            assert node.level == 0, f"{path}: relative import (bncheck imports absolutely, by layer)"
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bncheck")}
    return found


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_belongs_to_a_layer():
    assert {p.parent.name for p in _modules()} == set(LAYERS)
    assert {p.stem for p in PACKAGE.glob("*.py")} == FACADES


def test_the_tests_mirror_the_packages():
    """tests/<layer>/ per subpackage; planted bugs in one place (tests/planted/); the model zoo apart."""
    tests = Path(__file__).parent
    found = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert found == set(LAYERS) | {"planted", "zoo"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_points_up_or_sideways(path):
    layer = path.parent.name
    for module in _imports(path):
        parts = module.split(".")
        assert len(parts) >= 2 and parts[1] in LAYERS, f"{path.name} imports {module}: not a layer's module"
        target = parts[1]
        assert target == layer or LAYERS[target] < LAYERS[layer], (
            f"{layer}/{path.name} imports {module}: {target} (layer {LAYERS[target]}) is not below {layer} "
            f"(layer {LAYERS[layer]})")


def test_only_the_frontends_import_pytest():
    for path in _modules():
        if path.parent.name != "frontends":
            tree = ast.parse(path.read_text())
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert "pytest" not in names, f"{path}: the library never imports pytest"


@pytest.mark.parametrize("layer", ["core", "checks", "run"])
def test_no_front_end_flag_below_the_front_ends(layer):
    """Usage errors carry their field and each front end words them: the lower layers name no plugin flag."""
    flagged = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted((PACKAGE / layer).rglob("*.py"))
               for n, line in enumerate(path.read_text().splitlines(), 1) if "--bncheck-" in line]
    assert flagged == []


def test_loading_the_plugin_imports_no_torch():
    code = ("import sys, bncheck.frontends.plugin; "
            "heavy = [m for m in ('torch', 'numpy', 'bncheck.core', 'bncheck.run.plan') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_pytest_run_without_bncheck_models_imports_no_torch(pytester):
    """The whole plugin, every hook included, in a run that never names a model."""
    pytester.makepyfile(test_one="def test_one():\n    import sys\n    assert 'torch' not in sys.modules\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly").assert_outcomes(passed=1)
    pytester.makeconftest("import sys\n\ndef pytest_unconfigure():\n    assert 'torch' not in sys.modules\n")
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0


def test_every_documented_path_works():
    for name in bncheck.__all__:
        assert getattr(bncheck, name) is not None, name
    from bncheck.data import digits
    from bncheck.examples import seed_cnn
    from bncheck.strategies import bn_case
    from bncheck.syncbn import assert_syncbn_matches

    assert bncheck.data.digits is digits and bncheck.examples.seed_cnn is seed_cnn
    assert bncheck.strategies.bn_case is bn_case and bncheck.assert_syncbn_matches is assert_syncbn_matches
    assert bncheck.BNCheckError.__name__ == "BNCheckError" and "capture" in dir(bncheck)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bncheck.nope  # noqa: B018
    for command in (["-m", "bncheck", "check", "--help"], ["-m", "bncheck", "bench", "--help"],
                    ["-m", "reference", "--help"]):
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                              cwd=PACKAGE.parent)
        assert done.returncode == 0 and "usage" in done.stdout, (command, done.stderr[-500:])
