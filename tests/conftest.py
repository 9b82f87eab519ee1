"""Shared test configuration: hypothesis profiles, and the fixtures of the plugin tests (test_plugin.py,
test_bench.py)."""

import struct
from pathlib import Path

import pytest

# --- hypothesis profiles (tests/testing/test_properties.py) ------------------------------------------------
# "ci" (the default): deterministic and quick, the same examples on every run and machine.
# "thorough": many more random examples; select it with hypothesis' own option `--hypothesis-profile=thorough`.
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
# hypothesis' pytest plugin loads `--hypothesis-profile=NAME` in its pytest_configure. This conftest is usually
# imported before that (an initial conftest: `pytest`, `pytest tests/...`), and the plugin then replaces "ci";
# when it is imported later, a profile chosen on the command line is already current and must stay.
if settings.get_current_profile_name() == "default":
    settings.load_profile("ci")


# --- the plugin tests' pytester set-up ------------------------------------------------------------------------
MODELS_SOURCE = (Path(__file__).parent / "planted" / "specs.py").read_text()


@pytest.fixture(scope="session")
def _lazy_torch_imports():
    """Import what an in-process run would import lazily: pytester removes the modules first imported during
    an in-process run afterwards, and torch._dynamo (imported by an optimizer step) cannot be imported twice;
    hypothesis's pytest plugin imports hypothesis at the end of every run (seconds, each time)."""
    import torch._dynamo  # noqa: F401

    try:
        import hypothesis  # noqa: F401
    except ImportError:
        pass


@pytest.fixture
def bnmodels(pytester, _lazy_torch_imports):
    """The test models as an importable `bnmodels` module in the pytester directory (also the cwd)."""
    pytester.makepyfile(bnmodels=MODELS_SOURCE)
    pytester.syspathinsert()
    return pytester


@pytest.fixture
def cli_models(tmp_path, monkeypatch):
    """The same test models as an importable `cli_models` module, for the CLI run in this process."""
    (tmp_path / "cli_models.py").write_text(MODELS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))


# --- shared by several test files -------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """torch on one CPU thread during the test: timings and training on a busy 2-core machine stay steady."""
    from bncheck.core.threads import one_thread as single

    with single():
        yield


@pytest.fixture(scope="session")
def d8():
    """scikit-learn's 8x8 digits (bncheck.data.digits), loaded once."""
    from bncheck.data import digits

    return digits()


def write_idx(path, array) -> None:
    """Write a uint8 array as an uncompressed IDX file (the MNIST / Fashion-MNIST format): a big-endian
    magic 0x0000 08 <ndim>, one big-endian int32 per dim, then the bytes."""
    import numpy as np

    array = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())
