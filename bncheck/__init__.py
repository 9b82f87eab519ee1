"""bncheck: is your BatchNorm right? Checks against an independent float64 oracle of PyTorch's BN contract."""

from .capture import capture
from .checks import (
    LAYER_CHECKS,
    assert_backward,
    assert_batch_stats,
    assert_dtype,
    assert_eval_output,
    assert_eval_single_sample,
    assert_eval_state_unchanged,
    assert_memory_format,
    assert_running_stats,
    assert_single_value_raises,
    assert_standardization,
)
from .discover import find_batchnorms, is_batchnorm, kind_of
from .errors import BNCheckError, BNCheckSkip, BNCheckUsageError, BNCheckWarning

__all__ = [
    "LAYER_CHECKS", "BNCheckError", "BNCheckSkip", "BNCheckUsageError", "BNCheckWarning",
    "assert_backward", "assert_batch_stats", "assert_dtype", "assert_eval_output", "assert_eval_single_sample",
    "assert_eval_state_unchanged", "assert_memory_format", "assert_running_stats", "assert_single_value_raises",
    "assert_standardization", "capture", "find_batchnorms", "is_batchnorm", "kind_of",
]
