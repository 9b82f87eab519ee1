"""bncheck: is your BatchNorm right? Checks against an independent float64 oracle of PyTorch's BN contract."""

from .ablate import ablate, bn_after_activation, bn_before_activation, drop_bias_before_bn, drop_dropout
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
from .convergence import (
    Training,
    assert_converges_faster,
    assert_no_slower,
    assert_same_speed,
    assert_tolerates_higher_lr,
    combinations,
    compare_convergence,
    fit,
    sweep,
    train,
)
from .data import Data, digits, fashion_mnist, for_input_shape, mnist5k
from .discover import find_batchnorms, is_batchnorm, kind_of
from .errors import BNCheckError, BNCheckSkip, BNCheckUsageError, BNCheckWarning
from .lints import find_frozen_affine_training, find_keras_momentum, find_redundant_bias, lint
from .model_checks import (
    MODEL_CHECKS,
    assert_bn_ops_follow_mode,
    assert_eval_no_state_change,
    assert_fusion_matches,
    assert_state_dict_roundtrip,
    assert_train_differs_from_eval,
)
from .population import assert_population_stats, population_drift, population_stats
from .syncbn import assert_syncbn_matches

__all__ = [
    "LAYER_CHECKS", "MODEL_CHECKS", "BNCheckError", "BNCheckSkip", "BNCheckUsageError", "BNCheckWarning",
    "assert_backward", "assert_batch_stats", "assert_bn_ops_follow_mode", "assert_dtype", "assert_eval_no_state_change",
    "assert_eval_output", "assert_eval_single_sample", "assert_eval_state_unchanged", "assert_fusion_matches",
    "assert_memory_format", "assert_running_stats", "assert_single_value_raises", "assert_standardization",
    "assert_state_dict_roundtrip", "assert_train_differs_from_eval", "capture", "find_batchnorms",
    "find_frozen_affine_training", "find_keras_momentum", "find_redundant_bias", "is_batchnorm", "kind_of", "lint",
    # convergence, ablation, data, population statistics, synchronized BN
    "Data", "Training", "ablate", "assert_converges_faster", "assert_no_slower", "assert_population_stats",
    "assert_same_speed", "assert_syncbn_matches", "assert_tolerates_higher_lr", "bn_after_activation",
    "bn_before_activation", "combinations", "compare_convergence", "digits", "drop_bias_before_bn", "drop_dropout",
    "fashion_mnist", "fit", "for_input_shape", "mnist5k", "population_drift", "population_stats", "sweep", "train",
]
