"""Shared test configuration."""

# --- hypothesis profiles (tests/test_properties.py) ------------------------------------------------------------
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
