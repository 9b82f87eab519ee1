"""The repository itself: the README's set-up can run in a fresh clone, and CI runs exactly that set-up."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT_DIRS = {".venv", ".nox", ".tox"}  # what `python3.11 -m venv .venv`, nox and tox create


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to inspect")
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_no_tracked_path_is_where_the_set_up_creates_an_environment():
    clashes = [p for p in _tracked() if p.split("/")[0] in ENVIRONMENT_DIRS]
    assert clashes == [], f"tracked paths block the README's set-up: {clashes}"


def test_ci_runs_the_readme_quick_start_verbatim_and_deletes_nothing_first():
    block = subprocess.run(["bash", str(ROOT / ".ci" / "quickstart")], capture_output=True, text=True,
                           check=True).stdout
    assert f"```bash\n{block}```" in (ROOT / "README.md").read_text()
    assert "pip install" in block and "pytest" in block
    run = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/quickstart" in run and "rm " not in run
