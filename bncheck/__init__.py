"""bncheck: is your BatchNorm right? Checks against an independent float64 oracle of PyTorch's BN contract.

Every public name is imported on first use (PEP 562), so that importing the package, or pytest loading its plugin
entry point (bncheck.frontends.plugin), costs nothing and imports no torch."""

import importlib
import importlib.util
from typing import TYPE_CHECKING

# public name -> the module that defines it, grouped as the README presents them
_EXPORTS = {
    # one call for a whole model
    "check_model": "run.check",
    **dict.fromkeys(["Report", "Outcome"], "run.report"),
    # the checks: one registry (bncheck.checks.registry); item X is assert_X, former names kept as aliases
    **dict.fromkeys(["LAYER_CHECKS", "MODEL_CHECKS", "REGISTRY", "check"], "checks"),
    **dict.fromkeys(["assert_backward", "assert_batch_stats", "assert_channel_mismatch", "assert_dtype",
                     "assert_empty_batch", "assert_eval_output", "assert_eval_single_sample", "assert_eval_state",
                     "assert_grad_modes", "assert_large_eps", "assert_memory_format", "assert_non_contiguous",
                     "assert_running_stats", "assert_single_value", "assert_standardization",
                     "assert_statistics_registered",
                     "assert_channel_mismatch_raises", "assert_eval_state_unchanged", "assert_single_value_raises"],
                    "checks"),
    **dict.fromkeys(["assert_model_eval_state", "assert_eval_no_state_change", "assert_model_eval_single_sample"],
                    "checks.eval"),
    **dict.fromkeys(["assert_model_bn_mode", "assert_model_fusion", "assert_model_state_dict_roundtrip",
                     "assert_model_train_vs_eval", "assert_bn_ops_follow_mode", "assert_fusion_matches",
                     "assert_state_dict_roundtrip", "assert_train_differs_from_eval"], "checks.model"),
    "assert_model_running_stats": "checks.model_statistics",
    # BN beyond eager mode: torch.compile, torch.export
    **dict.fromkeys(["assert_model_compile", "assert_compile_matches"], "checks.compiled"),
    **dict.fromkeys(["assert_model_export", "assert_export_matches"], "checks.exported"),
    # lints, guards around the user's own training step and evaluation, discovery, capture
    **dict.fromkeys(["LINTS", "find_frozen_affine_training", "find_keras_momentum", "find_redundant_bias", "lint"],
                    "checks.lints"),
    **dict.fromkeys(["assert_bn_frozen", "assert_eval_is_pure", "assert_stats_updated"], "checks.guards"),
    **dict.fromkeys(["Watch", "watch"], "checks.watch"),
    **dict.fromkeys(["find_batchnorms", "is_batchnorm", "kind_of"], "core.discover"),
    "capture": "core.capture",
    # errors
    **dict.fromkeys(["BNCheckError", "BNCheckSkip", "BNCheckUsageError", "BNCheckWarning", "BNConformanceWarning"],
                    "core.errors"),
    # convergence, ablation, data, population statistics, synchronized BN
    **dict.fromkeys(["ablate", "bn_after_activation", "bn_before_activation", "drop_bias_before_bn",
                     "drop_dropout"], "training.ablate"),
    **dict.fromkeys(["Training", "fit", "train"], "training.fit"),
    **dict.fromkeys(["assert_converges_faster", "assert_no_slower", "assert_same_speed", "assert_tolerates_higher_lr",
                     "compare_convergence"], "training.convergence"),
    **dict.fromkeys(["combinations", "sweep"], "training.sweep"),
    **dict.fromkeys(["Data", "digits", "fashion_mnist", "for_input_shape", "mnist5k"], "training.data"),
    **dict.fromkeys(["assert_population_stats", "population_drift", "population_stats"], "training.population"),
    "recalibrate": "training.recalibrate",
    "assert_convergence": "training.convergence_item",
    "assert_syncbn_matches": "syncbn",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        if importlib.util.find_spec(f"bncheck.{name}") is None:
            raise AttributeError(f"module 'bncheck' has no attribute {name!r}")
        return importlib.import_module(f"bncheck.{name}")  # a submodule: bncheck.data, bncheck.examples, ...
    value = getattr(importlib.import_module(f"bncheck.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # static imports for type checkers and IDEs; at run time each name loads on first use
    from .checks import (
        LAYER_CHECKS,
        MODEL_CHECKS,
        REGISTRY,
        assert_backward,
        assert_batch_stats,
        assert_channel_mismatch,
        assert_channel_mismatch_raises,
        assert_dtype,
        assert_empty_batch,
        assert_eval_output,
        assert_eval_single_sample,
        assert_eval_state,
        assert_eval_state_unchanged,
        assert_grad_modes,
        assert_large_eps,
        assert_memory_format,
        assert_non_contiguous,
        assert_running_stats,
        assert_single_value,
        assert_single_value_raises,
        assert_standardization,
        assert_statistics_registered,
        check,
    )
    from .checks.compiled import assert_compile_matches, assert_model_compile
    from .checks.eval import assert_eval_no_state_change, assert_model_eval_single_sample, assert_model_eval_state
    from .checks.exported import assert_export_matches, assert_model_export
    from .checks.guards import assert_bn_frozen, assert_eval_is_pure, assert_stats_updated
    from .checks.lints import LINTS, find_frozen_affine_training, find_keras_momentum, find_redundant_bias, lint
    from .checks.model import (
        assert_bn_ops_follow_mode,
        assert_fusion_matches,
        assert_model_bn_mode,
        assert_model_fusion,
        assert_model_state_dict_roundtrip,
        assert_model_train_vs_eval,
        assert_state_dict_roundtrip,
        assert_train_differs_from_eval,
    )
    from .checks.model_statistics import assert_model_running_stats
    from .checks.watch import Watch, watch
    from .core.capture import capture
    from .core.discover import find_batchnorms, is_batchnorm, kind_of
    from .core.errors import BNCheckError, BNCheckSkip, BNCheckUsageError, BNCheckWarning, BNConformanceWarning
    from .run.check import check_model
    from .run.report import Outcome, Report
    from .syncbn import assert_syncbn_matches
    from .training.ablate import ablate, bn_after_activation, bn_before_activation, drop_bias_before_bn, drop_dropout
    from .training.convergence import (
        assert_converges_faster,
        assert_no_slower,
        assert_same_speed,
        assert_tolerates_higher_lr,
        compare_convergence,
    )
    from .training.convergence_item import assert_convergence
    from .training.data import Data, digits, fashion_mnist, for_input_shape, mnist5k
    from .training.fit import Training, fit, train
    from .training.population import assert_population_stats, population_drift, population_stats
    from .training.recalibrate import recalibrate
    from .training.sweep import combinations, sweep
