"""The per-layer checks, by name: each is f(layer, x, *, name, seed) -> None or raises BNCheckError/BNCheckSkip."""

from bncheck.checks.backward import assert_backward
from bncheck.checks.edges import (
    assert_channel_mismatch_raises,
    assert_empty_batch,
    assert_grad_modes,
    assert_large_eps,
)
from bncheck.checks.eval import assert_eval_output, assert_eval_single_sample, assert_eval_state_unchanged
from bncheck.checks.formats import assert_dtype, assert_memory_format, assert_non_contiguous
from bncheck.checks.running import assert_running_stats, assert_statistics_registered
from bncheck.checks.train import assert_batch_stats, assert_single_value_raises, assert_standardization

LAYER_CHECKS = {
    "standardization": assert_standardization,
    "batch_stats": assert_batch_stats,
    "running_stats": assert_running_stats,
    "eval_output": assert_eval_output,
    "eval_state": assert_eval_state_unchanged,
    "eval_single_sample": assert_eval_single_sample,
    "single_value": assert_single_value_raises,
    "backward": assert_backward,
    "dtype": assert_dtype,
    "memory_format": assert_memory_format,
    "non_contiguous": assert_non_contiguous,
    "statistics_registered": assert_statistics_registered,
    "empty_batch": assert_empty_batch,
    "channel_mismatch": assert_channel_mismatch_raises,
    "large_eps": assert_large_eps,
    "grad_modes": assert_grad_modes,
}

__all__ = ["LAYER_CHECKS", *(f.__name__ for f in LAYER_CHECKS.values())]  # noqa: PLE0604
