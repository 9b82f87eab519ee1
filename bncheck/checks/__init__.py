"""Every check, registered in bncheck.checks.registry by its module on import; LAYER_CHECKS, MODEL_CHECKS and
bncheck.checks.lints.LINTS are live views of the registry by scope."""

# ruff: noqa: I001 - each module registers its checks when imported: this order is the items' order
from bncheck.checks import train, running, eval, backward, formats, edges  # noqa: F401
from bncheck.checks import model_statistics, model, compiled, exported, lints  # noqa: F401
from bncheck.checks.backward import assert_backward
from bncheck.checks.edges import (
    assert_channel_mismatch,
    assert_channel_mismatch_raises,
    assert_empty_batch,
    assert_grad_modes,
    assert_large_eps,
)
from bncheck.checks.eval import assert_eval_output, assert_eval_single_sample, assert_eval_state
from bncheck.checks.eval import assert_eval_state_unchanged
from bncheck.checks.formats import assert_dtype, assert_memory_format, assert_non_contiguous
from bncheck.checks.registry import REGISTRY, ScopeTable, check
from bncheck.checks.running import assert_running_stats, assert_statistics_registered
from bncheck.checks.train import assert_batch_stats, assert_single_value, assert_single_value_raises
from bncheck.checks.train import assert_standardization

LAYER_CHECKS = ScopeTable("layer")
MODEL_CHECKS = ScopeTable("model", "model_")

__all__ = [
    "LAYER_CHECKS", "MODEL_CHECKS", "REGISTRY", "check",
    "assert_backward", "assert_batch_stats", "assert_channel_mismatch", "assert_dtype", "assert_empty_batch",
    "assert_eval_output", "assert_eval_single_sample", "assert_eval_state", "assert_grad_modes", "assert_large_eps",
    "assert_memory_format", "assert_non_contiguous", "assert_running_stats", "assert_single_value",
    "assert_standardization", "assert_statistics_registered",
    # the former names (documented aliases)
    "assert_channel_mismatch_raises", "assert_eval_state_unchanged", "assert_single_value_raises",
]
