"""The edges: an empty batch and a wrong channel count (torch conformance: warnings), a large eps and every autograd
mode (the contract)."""

import contextlib

import torch

from bncheck.checks.registry import check
from bncheck.core import oracle
from bncheck.core.compare import check_close, nonconforming
from bncheck.core.errors import BNCheckError, BNCheckSkip, assertion_helper, one_line
from bncheck.core.harness import layer_case, params, run
from bncheck.core.state import clone
from bncheck.core.threads import one_thread, single_threaded
from bncheck.core.tolerances import tolerance_for

LARGE_EPS = 0.1  # eps this large shows wherever a layer ignores its eps or adds it to the running variance


def _mode(train: bool) -> str:
    return "train mode" if train else "eval mode"


def _statistics(layer) -> dict[str, torch.Tensor]:
    return {key: getattr(layer, key).detach().clone() for key in ("running_mean", "running_var")
            if isinstance(getattr(layer, key, None), torch.Tensor)}


@check("empty_batch", level="conformance")
@assertion_helper
@single_threaded
def assert_empty_batch(layer, x, *, name: str = "", seed: int = 0) -> None:
    """Torch conformance (BNConformanceWarning): a batch of N = 0 gives an empty output of the input's shape in
    train and eval mode and leaves the running statistics as they were, as torch does (detection heads with no
    region left rely on it). The contract does not fix N = 0: a layer that raises there is not wrong."""
    case = layer_case(layer, name, x, seed)
    empty = case.inputs[0].x[:0]
    for train in case.modes():
        twin = case.fresh()
        before = _statistics(twin)
        where = f"{case.title}, empty batch {tuple(empty.shape)}, {_mode(train)}"
        try:
            y = run(twin, empty, train=train)
        except Exception as exc:
            nonconforming(where, f"raised {one_line(exc)}", "returns an empty output and leaves the statistics as "
                          "they are", "a guard or a division that treats N = 0 as an error")
            continue
        if not isinstance(y, torch.Tensor) or y.shape != empty.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            nonconforming(where, f"returned {got}", f"returns an empty output {tuple(empty.shape)}",
                          "the output is built from the statistics' shape rather than the input's")
        for key, value in _statistics(twin).items():
            if not torch.equal(value, before[key]):
                nan = int(value.isnan().sum())
                nonconforming(where, f"{key} changed" + (f" (NaN in {nan} of {value.numel()} channels)" if nan
                                                         else ""), "leaves the statistics as they are",
                              "statistics of zero values are 0/0 = NaN: skip the running-statistics update when "
                              "the batch is empty")
                break


@check("channel_mismatch", level="conformance")
@assertion_helper
@single_threaded
def assert_channel_mismatch(layer, x, *, name: str = "", seed: int = 0) -> None:
    """Torch conformance (BNConformanceWarning): an input whose channel count differs from the layer's (C + 1
    channels; 1 channel too, except for a frozen BN, whose plain broadcasting torchvision accepts) raises in train
    and eval mode, as torch does, instead of broadcasting against γ, β and the statistics."""
    case = layer_case(layer, name, x, seed)
    twin = case.fresh()
    if not any(isinstance(t, torch.Tensor) for t in (*params(twin), *_statistics(twin).values())):
        raise BNCheckSkip(f"{case.title}: no per-channel γ, β or statistics: any channel count is valid")
    base = case.inputs[0].x
    wrong = [torch.cat([base, base[:, :1]], 1)] + ([base[:, :1]] if case.channels > 1 and not case.frozen else [])
    for xs in wrong:
        for train in case.modes():
            try:
                y = run(case.fresh(), xs, train=train)
            except Exception:
                continue
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            nonconforming(f"{case.title}, input {tuple(xs.shape)} to a layer of {case.channels} channels, "
                          f"{_mode(train)}", f"returned {got} instead of raising",
                          "raises ('running_mean should contain ... elements')",
                          "γ, β and the statistics broadcast silently against the input; check the channel count")
            return


assert_channel_mismatch_raises = assert_channel_mismatch  # its former name (a documented alias)


@check("large_eps")
@assertion_helper
def assert_large_eps(layer, x, *, name: str = "", seed: int = 0) -> None:
    """With eps = LARGE_EPS set on (a copy of) the layer, the train output, the running statistics after a train
    step and the eval output follow the contract: the layer reads its eps, and only inside the sqrt. Skips where the
    layer fails the same at its own eps: another item says what is wrong, and it is not the eps."""
    if not isinstance(getattr(layer, "eps", None), (int, float)):
        raise BNCheckSkip(f"{name or 'layer'}: no eps attribute to set")
    twin = clone(layer)
    twin.eps = LARGE_EPS
    try:
        with one_thread():
            _follows_its_eps(twin, x, name=f"{name or 'layer'}, eps set to {LARGE_EPS:g}", seed=seed)
    except BNCheckError as exc:
        try:
            with one_thread():
                _follows_its_eps(layer, x, name=name, seed=seed)
        except BNCheckError:
            raise BNCheckSkip(f"{name or 'layer'}: fails at its own eps {layer.eps:g} too (the batch_stats, "
                              f"running_stats or eval_output item says how): eps is not what is wrong") from None
        raise exc from None


def _follows_its_eps(layer, x, *, name: str, seed: int) -> None:
    """One train step and one eval forward per input, against the oracle with the layer's eps."""
    case = layer_case(layer, name, x, seed)
    ignored = "the layer ignores its eps (uses 1e-5, PyTorch's default)"
    for probe in case.inputs:
        if not case.frozen:
            twin = case.fresh()
            weight, bias = params(twin)
            state = oracle.RunningStats.of(twin) if case.tracks else None
            y = run(twin, probe.x, train=True)
            check_close(y, oracle.train_forward(probe.x, case.eps, weight, bias),
                        where=case.where(probe, "train mode"), quantity="output",
                        tol=tolerance_for("output", probe.x.dtype),
                        axes=("sample", "channel"), cause="eps misplaced or not the layer's own",
                        hypotheses=[(ignored, lambda: oracle.train_forward(probe.x, 1e-5, weight, bias))])
            if state is not None:
                after = oracle.update_running(state, probe.x, case.momentum)
                check_close(twin.running_var, after.var, where=case.where(probe, "after a train step"),
                            quantity="running_var", tol=tolerance_for("statistics", twin.running_var.dtype),
                            cause="eps is added to the running variance (it belongs only inside the sqrt)")
        if case.tracks:
            twin = case.fresh()
            weight, bias = params(twin)
            y = run(twin, probe.x, train=False)
            expected = oracle.eval_forward(probe.x, twin.running_mean, twin.running_var, case.eps, weight, bias)
            check_close(y, expected, where=case.where(probe, "eval mode"), quantity="output",
                        tol=tolerance_for("output", probe.x.dtype), axes=("sample", "channel"),
                        cause="eval mode does not add the layer's eps inside the sqrt", hypotheses=[
                            (ignored, lambda: oracle.eval_forward(probe.x, twin.running_mean, twin.running_var, 1e-5,
                                                                  weight, bias))])


_GRAD_MODES = {"torch.no_grad()": torch.no_grad, "torch.inference_mode()": torch.inference_mode}


def _in_grad_mode(twin, x: torch.Tensor, train: bool, mode=None) -> list[tuple[str, torch.Tensor]]:
    """(quantity, value) of one forward: the output and the running statistics after it; with gradients enabled
    and a requires_grad input when `mode` is None, else inside `mode`."""
    twin.train(train)
    xs = x.detach().clone().requires_grad_(mode is None)
    with mode() if mode is not None else contextlib.nullcontext():
        y = twin(xs)
    return [("output", y.detach().clone())] + [(key, value) for key, value in _statistics(twin).items()]


@check("grad_modes")
@assertion_helper
@single_threaded
def assert_grad_modes(layer, x, *, name: str = "", seed: int = 0) -> None:
    """The autograd mode changes nothing: under torch.no_grad() and torch.inference_mode() the output and the
    running statistics are those of a forward with gradients enabled on a requires_grad input, in train mode
    (batch statistics, statistics updated) and in eval mode (running statistics)."""
    case = layer_case(layer, name, x, seed)
    probe = case.inputs[0]
    for train in case.modes():
        expected = _in_grad_mode(case.fresh(), probe.x, train)
        for label, mode in _GRAD_MODES.items():
            got = _in_grad_mode(case.fresh(), probe.x, train, mode)
            for (quantity, a), (_, b) in zip(got, expected):
                check_close(a, b, where=case.where(probe, _mode(train), label),
                            quantity=f"{quantity} vs with gradients enabled",
                            tol=tolerance_for("output", probe.x.dtype),
                            axes=("sample", "channel") if quantity == "output" else ("channel",),
                            cause="the layer decides between batch and running statistics (or whether to update "
                                  "them) by the autograd mode (torch.is_grad_enabled(), x.requires_grad) instead "
                                  "of self.training")
