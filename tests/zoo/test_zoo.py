"""The zoo: every bncheck item on every BN model of torchvision, timm, EfficientNet-PyTorch and the other libraries of
the catalog must pass (no false alarms on correct code). `nox -s zoo` runs it all (-m zoo) and writes docs/ZOO.md,
`nox -s zoo -- --quick` only catalog.quick_ids(); the models of catalog.QUICK run in the default suite.

With BNCHECK_ZOO_RESULTS=DIR each model's result is also written to DIR/<id>.json, for tests/zoo/report.py."""

import json
import os
from pathlib import Path

import pytest

from . import catalog, run


def pytest_generate_tests(metafunc):
    # Surveying the zoo builds every candidate model (15 s): only where the zoo tests are selected.
    # BNCHECK_ZOO_QUICK=1 (nox -s zoo -- --quick): catalog.quick_ids(), each library in minutes.
    if "zoo_model" in metafunc.fixturenames:
        expression = metafunc.config.option.markexpr or ""
        selected = "zoo" in expression.replace("not zoo", "")
        ids = sorted(catalog.quick_ids() if os.environ.get("BNCHECK_ZOO_QUICK") else [zm.id for zm in catalog.zoo()])
        split = os.environ.get("BNCHECK_ZOO_SPLIT")  # K/M (nox -s zoo -- --split=K/M): every M-th model from the K-th
        if split:
            part, parts = map(int, split.split("/"))
            ids = ids[part - 1::parts]
        metafunc.parametrize("zoo_model", ids if selected else [])


def _check(model_id: str) -> None:
    result = run.check(catalog.model(model_id))
    out = os.environ.get("BNCHECK_ZOO_RESULTS")
    if out:
        path = Path(out) / f"{model_id.replace(':', '__').replace('/', '_')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.to_json())
    if result.unrunnable:
        pytest.skip(f"{model_id}: bncheck cannot run it: {result.unrunnable}")
    assert result.failed == 0, f"{model_id}: {result.failed} of {result.items} items failed:\n" + "\n".join(
        result.failures)
    assert result.passed > 0, f"{model_id}: no item passed ({result.items} items)"


@pytest.mark.zoo
def test_zoo_model_passes_every_item(zoo_model):
    _check(zoo_model)


@pytest.mark.slow
@pytest.mark.parametrize("model_id", catalog.QUICK)
def test_quick_zoo_model_passes_every_item(model_id):
    _check(model_id)


@pytest.mark.zoo
def test_the_zoo_covers_the_libraries():
    models = catalog.zoo()
    libraries = {zm.library for zm in models}
    assert {"torchvision", "timm", "efficientnet_pytorch"} <= libraries, libraries
    assert sum(zm.library == "timm" for zm in models) >= 30
    assert sum(zm.library == "torchvision" for zm in models) >= 60


@pytest.mark.zoo
def test_the_zoo_covers_the_other_libraries_also_when_quick():
    # the zoo extra installs them all; the quick subset keeps at least one model of each
    quick = set(catalog.quick_ids())
    for library, models in catalog.OTHER_LIBRARIES.items():
        ids = [zm.id for zm in models()]
        assert ids, f"{library}: no model (is it installed? pip install -e .[zoo])"
        assert quick & set(ids), f"{library}: no model in the quick subset"


def test_the_report_lists_every_model_and_counts_the_failures():
    from .report import render

    ok = run.ZooResult("torchvision:a", (3, 8, 8), bn_layers=2, kinds="BatchNorm2d: 2", items=5, passed=5)
    bad = run.ZooResult("timm:b", (3, 8, 8), items=3, passed=2, failed=1, failures=["fusion: off"])
    page = render([json.loads(r.to_json()) for r in (ok, bad)], seconds=12)
    assert "**2 models** (timm: 1, torchvision: 1): **1 pass every item, 1 fail**" in page
    assert "| torchvision:a | 3x8x8 | 2 | BatchNorm2d: 2 | 5 | 5 | 0 | 0 | 0 | 0.0 |" in page
    assert "## Failures\n\n- timm:b: fusion: off" in page
