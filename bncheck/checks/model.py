"""Whole-model checks: eval purity, running statistics across the model, train vs eval, state_dict round trip, BN
ops obeying their module's mode, and conv→BN fusion. Each runs on copies of the model: f(model, x, *, name) -> None
or raises BNCheckError."""

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.utils._python_dispatch import TorchDispatchMode

from bncheck.checks.registry import check
from bncheck.core.capture import eval_run, float_leaves, forward
from bncheck.core.compare import check_close, fail, matches
from bncheck.core.discover import find_batchnorms, is_frozen
from bncheck.core.errors import BNCheckSkip, assertion_helper
from bncheck.core.state import clone, materialized, without_extensions
from bncheck.core.tolerances import FUSION, tolerance_for


def _run(model: nn.Module, x, *, train: bool | None, grad: bool = False) -> list[torch.Tensor]:
    """The floating-point outputs of `model` on x (None: in the modes its modules are in)."""
    if train is not None:
        model.train(train)
    with torch.set_grad_enabled(grad):
        return float_leaves(forward(model, x))


def _title(model, name):
    return name or type(model).__name__


def _twin(model: nn.Module, x) -> nn.Module:
    """A copy of `model` with its Lazy parameters materialized: their first forward is set-up, not a state change."""
    return materialized(clone(model), x)


def _trainable_bns(model):
    return {n: m for n, m in find_batchnorms(model).items() if not is_frozen(m)}


def _same_for_every_sample(out: torch.Tensor) -> bool:
    return out.dim() == 0 or out.shape[0] < 2 or matches(out, out[:1].expand_as(out), tolerance_for("identical",
                                                                                                   out.dtype))


@check("model_train_vs_eval", scope="model", trains_model=True)
@assertion_helper
def assert_model_train_vs_eval(model: nn.Module, x, *, name: str = "") -> None:
    """Where BN layers train, train-mode and eval-mode outputs differ (batch vs running statistics)."""
    bns = _trainable_bns(model)
    if not bns or all(getattr(m, "running_mean", None) is None for m in bns.values()):
        raise BNCheckSkip(f"{_title(model, name)}: no BN layer that trains with running statistics")
    # Only the BN layers train: dropout or other mode-dependent layers must not make the outputs differ for them.
    run = eval_run(model, x)
    eval_out = float_leaves(run.output)
    twin = _twin(model, x).eval()  # our own copy: only its BN layers train now
    for bn_name in bns:
        twin.get_submodule(bn_name).train()
    train_out = _run(twin, x, train=None)
    if all(matches(a, b, tolerance_for("identical", b.dtype)) for a, b in zip(train_out, eval_out)):
        if all(_same_for_every_sample(o) for o in eval_out):
            raise BNCheckSkip(f"{_title(model, name)}: the eval output is the same for every sample (within "
                              f"float64's tolerance): the signal vanishes before the output (γ near 0 in a deep "
                              f"stack, dead activations), so no difference between the modes can reach it")
        raise fail(f"{_title(model, name)}", "train-mode and eval-mode outputs are identical",
                   "the BN layers ignore the module's mode (train() has no effect), or the model is never "
                   "switched: check overridden train()/eval() and functional batch_norm calls")


@check("model_state_dict_roundtrip", scope="model", trains_model=True, needs_batchnorm=False)
@assertion_helper
def assert_model_state_dict_roundtrip(model: nn.Module, x, *, name: str = "") -> None:
    """After a train step, state_dict() loaded into a fresh copy gives identical eval outputs (NaN where the
    trained model's is NaN); skips when the trained model's eval output is nowhere finite."""
    trained = _twin(model, x)
    restored = clone(trained)  # before the step: the same architecture and initial values
    outs = _run(trained, x, train=True, grad=True)
    params = [p for p in trained.parameters() if p.requires_grad]
    if params and outs:
        # A gentle step: the sum of a deep model's outputs at lr 0.01 sends it to NaN, which proves nothing.
        sum(o.float().mean() for o in outs).backward()
        torch.optim.SGD(params, lr=1e-3).step()
    restored.load_state_dict(trained.state_dict())
    expected = _run(trained, x, train=False)
    if expected and not any(bool(o.isfinite().any()) for o in expected):
        raise BNCheckSkip(f"{_title(model, name)}: after one train step the eval output is not finite anywhere: "
                          f"there is nothing to compare")
    for k, (a, b) in enumerate(zip(expected, _run(restored, x, train=False))):
        check_close(b, a, where=f"{_title(model, name)}, eval mode after a train step and a state_dict round trip",
                    quantity=f"output {k}", tol=tolerance_for("identical", a.dtype), axes=("sample",), equal_nan=True,
                    cause="some BN state is not in the state_dict: running statistics kept as plain attributes "
                          "or non-persistent buffers do not survive saving and loading")


_BN_OPS = "batch_norm"


class _BNModeWatch(TorchDispatchMode):
    """Records every batch_norm ATen op that trains (updates running stats) inside a module in eval mode."""

    def __init__(self, stack):
        super().__init__()
        self.stack = stack
        self.offences: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if _BN_OPS in name and "backward" not in name and self.stack:
            values = {a.name: v for a, v in zip(func._schema.arguments, args)} | kwargs
            module_name, module = self.stack[-1]
            if values.get("training") and values.get("running_mean") is not None and not module.training:
                self.offences.append(f"{module_name or 'the model'} ({type(module).__name__}) called "
                                     f"aten.{name}(training=True) with running statistics while in eval mode")
        return func(*args, **kwargs)


@check("model_bn_mode", scope="model")
@assertion_helper
def assert_model_bn_mode(model: nn.Module, x, *, name: str = "") -> None:
    """In eval mode no batch_norm op runs with training=True on running statistics (the 'eval ignored' bug)."""
    twin = _twin(model, x).eval()
    stack: list[tuple[str, nn.Module]] = []
    handles = []

    def leave(module, args, output):
        stack.pop()

    for mod_name, module in twin.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=mod_name: stack.append((n, m)) and None))
        handles.append(module.register_forward_hook(leave))
    watch = _BNModeWatch(stack)
    try:
        with watch, torch.no_grad():
            forward(twin, x)
    finally:
        for h in handles:
            h.remove()
    if watch.offences:
        raise fail(f"{_title(model, name)}, eval mode", "; ".join(dict.fromkeys(watch.offences)),
                   "a functional batch_norm(..., training=True) ignores self.training: pass "
                   "training=self.training (running statistics are updated and batch statistics used in eval)")


def _fusable(producer: nn.Module, bn: nn.Module) -> bool:
    return isinstance(producer, _ConvNd) or (isinstance(producer, nn.Linear)
                                              and producer.out_features == getattr(bn, "num_features", None))


def _plain_weights(producer: nn.Module) -> nn.Module:
    """`producer` (a copy) with each parametrization (weight_norm, spectral_norm, ...) baked into a plain parameter
    of its current value: fusion writes the weight, which a parametrized module computes instead of holding. Its
    outputs stay the same."""
    if parametrize.is_parametrized(producer):
        for name in list(producer.parametrizations):
            parametrize.remove_parametrizations(producer, name, leave_parametrized=True)
    return producer


def _fused_outputs(producer: nn.Module, bn: nn.Module, x: torch.Tensor, dtype: torch.dtype):
    """(fused, unfused) eval outputs of producer → BN on x, on copies in `dtype`; the BN without its extension
    children (the activation of a BN + act layer): like is compared with like."""
    p, b = _plain_weights(clone(producer)).to(dtype), without_extensions(clone(bn)).to(dtype)
    fused = (fuse_conv_bn_eval(p, b, transpose=isinstance(p, _ConvTransposeNd)) if isinstance(p, _ConvNd)
             else fuse_linear_bn_eval(p, b))
    with torch.no_grad():
        return fused(x.to(dtype)), b(p(x.to(dtype)))


def _fused_pair(producer: nn.Module, bn: nn.Module, x: torch.Tensor):
    """(fused, unfused, tolerance), in x's dtype when they agree to float32's tolerance (the usual case, and cheap);
    else in float64, so that only the BN's own eval formula can tell them apart (deep, wide or large-valued layers
    round differently in float32); in x's dtype at the looser FUSION bound where a layer does not run in float64."""
    fused, unfused = _fused_outputs(producer, bn, x, x.dtype)
    if matches(fused, unfused, tolerance_for("fusion", x.dtype)):
        return fused, unfused, tolerance_for("fusion", x.dtype)
    try:
        return *_fused_outputs(producer, bn, x, torch.float64), tolerance_for("fusion", torch.float64)
    except (RuntimeError, TypeError):
        return fused, unfused, FUSION


@check("model_fusion", scope="model")
@assertion_helper
def assert_model_fusion(model: nn.Module, x, *, name: str = "") -> None:
    """Each conv/linear → BN pair, fused for inference (torch.nn.utils.fusion), gives the unfused eval output.

    Checked pair by pair on each producer's real input (its first EVAL_RUN_SAMPLES samples), so it holds for any
    model, not only fx-traceable ones."""
    run = eval_run(model, x)
    twin = _twin(model, x).eval()
    pairs = []
    for bn_name, producer_name in run.producers.items():
        producer, bn = twin.get_submodule(producer_name), twin.get_submodule(bn_name)
        if getattr(bn, "running_mean", None) is None or producer_name not in run.producer_inputs:
            continue
        if _fusable(producer, bn):
            pairs.append((producer_name, bn_name, producer, bn))
    if not pairs:
        raise BNCheckSkip(f"{_title(model, name)}: no conv/linear → BN pair with running statistics to fuse")
    for producer_name, bn_name, producer, bn in pairs:
        got, expected, tol = _fused_pair(producer, bn, run.producer_inputs[producer_name])
        check_close(got, expected, where=f"{_title(model, name)}: {producer_name} fused with {bn_name}",
                    quantity="eval output, fused vs unfused", tol=tol, axes=("sample", "channel"),
                    cause=f"{bn_name} in eval mode is not the affine map (x − running_mean)/sqrt(running_var + "
                          f"eps)·γ + β that fusion assumes (eps, statistics or formula differ)")


# the former names (documented aliases)
assert_train_differs_from_eval = assert_model_train_vs_eval
assert_state_dict_roundtrip = assert_model_state_dict_roundtrip
assert_bn_ops_follow_mode = assert_model_bn_mode
assert_fusion_matches = assert_model_fusion
