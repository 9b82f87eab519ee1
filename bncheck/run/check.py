"""One call to check a model: every per-layer check on every BN layer, the model checks and the lints."""

import warnings

import torch
from torch import nn

from bncheck.core.errors import BNCheckError, BNCheckSkip, BNCheckWarning, one_line
from bncheck.core.spec import Loaded
from bncheck.core.tolerances import LOW_PRECISION
from bncheck.run.plan import Case, Plan
from bncheck.run.report import Outcome, Report
from bncheck.run.settings import Settings


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
    """Every item of `plan`, in order."""
    return Report(plan.spec, plan.header(), [run_case(case) for case in plan.cases()])


def check_model(model: nn.Module, x=None, *, input_shape: tuple[int, ...] | None = None, batch_size: int = 8,
                seed: int = 0, device: torch.device | str | None = None,
                dtype: torch.dtype | tuple[torch.dtype, ...] = LOW_PRECISION,
                strict: bool = False, torch_conformance: bool = False, name: str | None = None) -> Report:
    """Every bncheck item on `model` (never changed: all runs happen on copies) with the example input x (a tensor,
    or a tuple of a model's positional inputs), or a random batch of `input_shape` (one sample, without the batch
    dim). `dtype`: the dtype check's low-precision dtype(s); every other check runs in the model's own. `strict`:
    every warning fails; `torch_conformance`: differences from torch at the edges the contract does not fix fail.
    Returns the Report; `report.assert_ok()` raises a BNCheckError listing every failure."""
    settings = Settings(input_shape=input_shape, batch_size=batch_size, seed=seed,
                        device=torch.device("cpu" if device is None else device),
                        dtype=dtype if isinstance(dtype, tuple) else (dtype,), strict=strict,
                        torch_conformance=torch_conformance)
    return run_plan(Plan(Loaded(name or type(model).__name__, model, x), settings, shape_option="input_shape="))
