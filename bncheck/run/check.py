"""One call to check a model: every per-layer check on every BN layer, the model checks and the lints."""

import warnings

import torch
from torch import nn

from bncheck.core.errors import BNCheckError, BNCheckSkip, BNCheckUsageError, BNCheckWarning, one_line
from bncheck.core.passes import counted
from bncheck.core.spec import Loaded
from bncheck.run.plan import Case, Plan
from bncheck.run.report import Outcome, Report
from bncheck.run.settings import OPTIONS_BY_NAME, settings_from


def run_case(case: Case) -> Outcome:
    """Run one item, as pytest would judge it: a BNCheckSkip skips, any other exception fails (a crash inside a
    check is a failure of the layer, in one line), lint findings (BNCheckWarning) make a pass 'warned'."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BNCheckWarning)
        try:
            case.run()
            status, message, error = "passed", "", None
        except BNCheckSkip as exc:
            status, message, error = "skipped", str(exc), None
        except BNCheckError as exc:
            status, message, error = "failed", str(exc), exc
        except Exception as exc:
            status, message, error = "failed", one_line(exc), exc
    found = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, BNCheckWarning)))
    if status == "passed" and found:
        status = "warned"
    return Outcome(case.name, case.layer, status, message, found, error)


def run_plan(plan: Plan) -> Report:
    """Every item of `plan`, in order; with the profile setting, the passes they ran in `Report.passes`."""
    if not plan.settings.profile:
        return Report(plan.spec, plan.header(), [run_case(case) for case in plan.cases()])
    with counted() as passes:
        outcomes = [run_case(case) for case in plan.cases()]
    return Report(plan.spec, plan.header(), outcomes, passes)


def check_model(model: nn.Module, x=None, *, name: str | None = None, **options) -> Report:
    """Every bncheck item on `model` (never changed: all runs happen on copies) with the example input x (a tensor,
    or a tuple of a model's positional inputs), or a random batch of the `input_shape` option (one sample, without
    the batch dim). `options` are the plugin's, by name and with its defaults (bncheck.run.options.OPTIONS:
    input_shape, batch_size, device, dtype, seed, strict, torch_conformance, syncbn, convergence, data_root,
    compile, export, profile), as values or as the text the plugin takes. Returns the Report;
    `report.assert_ok()` raises a BNCheckError listing every failure."""
    unknown = sorted(set(options) - set(OPTIONS_BY_NAME))
    if unknown:
        raise BNCheckUsageError(f"check_model() has no option {', '.join(unknown)}; its options: "
                                f"{', '.join(OPTIONS_BY_NAME)}")
    if isinstance(options.get("dtype"), torch.dtype):
        options["dtype"] = (options["dtype"],)
    if isinstance(options.get("device"), torch.device):
        options["device"] = str(options["device"])
    settings = settings_from(options)
    return run_plan(Plan(Loaded(name or type(model).__name__, model, x), settings))
