"""The model under torch.export for inference: the exported program gives the eager eval output, normalizes with
the running statistics it holds (no batch_norm op with training=True), and holds them as the model has them, before
and after it runs."""

import torch
from torch import nn

from bncheck.checks.registry import check
from bncheck.core.capture import float_leaves, forward
from bncheck.core.compare import check_close, fail
from bncheck.core.discover import STATISTICS, find_batchnorms
from bncheck.core.errors import BNCheckSkip, assertion_helper, one_line
from bncheck.core.state import clone, materialized
from bncheck.core.tolerances import tolerance_for


def batch_statistics_ops(program) -> list[str]:
    """The batch_norm ops of an ExportedProgram's graph that normalize with batch statistics (training=True),
    one line each: 'node (aten.op)'."""
    found = []
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or "batch_norm" not in str(target) or not hasattr(target, "_schema"):
            continue
        values = {a.name: v for a, v in zip(target._schema.arguments, node.args)} | dict(node.kwargs)
        if values.get("training") is True:
            found.append(f"{node.name} ({target})")
    return found


def _held(program, key: str):
    return program.state_dict.get(key, program.constants.get(key))


def _statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """'layer.running_mean' -> a copy of the value, for every BN layer that has running statistics."""
    stats = {}
    for bn_name, bn in find_batchnorms(model).items():
        for stat in STATISTICS:
            value = getattr(bn, stat, None)
            if isinstance(value, torch.Tensor):
                stats[f"{bn_name}.{stat}" if bn_name else stat] = value.detach().clone()
    return stats


@check("model_export", scope="model", option="export")
@assertion_helper
def assert_export_matches(model: nn.Module, x, *, name: str = "", program=None) -> None:
    """torch.export.export of an eval copy of `model` (whatever mode the model is in: an exported program is for
    inference, and calling .eval() first is the exporter's job) gives the eager eval output and holds the running
    statistics as the model has them, unchanged by running it. `program`: an ExportedProgram the caller made from
    `model` instead (a copy of it is run), e.g. to catch one exported without .eval().

    A model torch.export cannot export skips ("torch.export could not export the model: ...")."""
    title = name or type(model).__name__
    twin = materialized(clone(model), x).eval()
    args = x if isinstance(x, tuple) else (x,)
    if program is None:
        try:
            program = torch.export.export(clone(twin), args)
        except Exception as exc:  # eager runs this model: the failure is the exporter's, not BN's
            raise BNCheckSkip(f"{title}: torch.export could not export the model: {one_line(exc)}") from exc
    else:
        program = clone(program)  # running it may write to the caller's model's buffers
    where = f"{title}, exported program vs eager eval"
    expected_stats = _statistics(twin)
    for key, value in expected_stats.items():
        held = _held(program, key)
        if held is None:
            raise fail(where, f"the program holds no {key}", "the running statistics are not buffers of the "
                              "module (plain attributes or tensors created in forward): export cannot carry them")
        check_close(held, value, where=where, quantity=f"{key} held by the program",
                    tol=tolerance_for("identical", value.dtype),
                    cause="the program was exported from another state of the model (exported before training, "
                          "or from a copy that ran in train mode)")
    training_ops = batch_statistics_ops(program)
    if training_ops:
        raise fail(where, f"the program normalizes with batch statistics: batch_norm with training=True at "
                          f"{', '.join(training_ops)}",
                   "the model was exported in train mode (call .eval() before torch.export.export), or its forward "
                   "forces training=True when exporting (a branch on torch.compiler.is_exporting())")
    with torch.no_grad():
        expected = float_leaves(forward(twin, x))
        got = float_leaves(program.module()(*args))
    if len(got) != len(expected):
        raise fail(where, f"the program returns {len(got)} floating-point outputs, eager {len(expected)}",
                   "the exported forward is not the eager one")
    for k, (g, e) in enumerate(zip(got, expected)):
        check_close(g, e, where=where, quantity=f"output {k}", tol=tolerance_for("output", e.dtype), axes=("sample",),
                    equal_nan=True, cause="the exported forward normalizes differently from eager eval (a branch on "
                                          "torch.compiler.is_exporting(), or the program exported in train mode)")
    for key, value in expected_stats.items():
        check_close(_held(program, key), value, where=f"{where}, after running the program", quantity=key,
                    tol=tolerance_for("identical", value.dtype),
                    cause="the program updates running statistics at inference: it was exported in train mode")


assert_model_export = assert_export_matches  # the item's name (a documented alias)
