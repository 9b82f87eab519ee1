"""Whole-model checks: eval purity, train vs eval, state_dict round trip, BN ops obeying their module's mode,
and conv→BN fusion. Each runs on copies of the model: f(model, x, *, name) -> None or raises BNCheckError."""

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .capture import capture, forward
from .checks.eval import assert_eval_single_sample
from .compare import check_close, fail, matches
from .discover import find_batchnorms, is_frozen
from .errors import BNCheckSkip
from .state import Snapshot, clone
from .threads import single_threaded
from .tolerances import FUSION, tolerance


def _run(model: nn.Module, x, *, train: bool | None, grad: bool = False) -> list[torch.Tensor]:
    """The floating-point outputs of `model` on x (None: in the modes its modules are in)."""
    if train is not None:
        model.train(train)
    with torch.set_grad_enabled(grad):
        out = forward(model, x)
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _title(model, name):
    return name or type(model).__name__


@single_threaded
def assert_eval_no_state_change(model: nn.Module, x, *, name: str = "") -> None:
    """A forward of the whole model in eval mode changes no parameter or buffer."""
    twin = clone(model).eval()
    before = Snapshot.of(twin)
    _run(twin, x, train=False)
    changed = before.differences(twin)
    if changed:
        raise fail(f"{_title(model, name)}, eval mode", f"a forward changed the model: {'; '.join(changed[:5])}",
                   "a BN layer updates its running statistics outside train mode")


def _trainable_bns(model):
    return {n: m for n, m in find_batchnorms(model).items() if not is_frozen(m)}


@single_threaded
def assert_train_differs_from_eval(model: nn.Module, x, *, name: str = "") -> None:
    """Where BN layers train, train-mode and eval-mode outputs differ (batch vs running statistics)."""
    bns = _trainable_bns(model)
    if not bns or all(getattr(m, "running_mean", None) is None for m in bns.values()):
        raise BNCheckSkip(f"{_title(model, name)}: no BN layer that trains with running statistics")
    # Only the BN layers train: dropout or other mode-dependent layers must not make the outputs differ for them.
    twin = clone(model).eval()
    for bn_name in bns:
        twin.get_submodule(bn_name).train()
    train_out = _run(twin, x, train=None)
    eval_out = _run(clone(model), x, train=False)
    if all(matches(a, b, tolerance(torch.float64)) for a, b in zip(train_out, eval_out)):
        raise fail(f"{_title(model, name)}", "train-mode and eval-mode outputs are identical",
                   "the BN layers ignore the module's mode (train() has no effect), or the model is never "
                   "switched: check overridden train()/eval() and functional batch_norm calls")


@single_threaded
def assert_state_dict_roundtrip(model: nn.Module, x, *, name: str = "") -> None:
    """After a train step, state_dict() loaded into a fresh copy gives identical eval outputs."""
    trained = clone(model)
    outs = _run(trained, x, train=True, grad=True)
    params = [p for p in trained.parameters() if p.requires_grad]
    if params and outs:
        sum(o.float().sum() for o in outs).backward()
        torch.optim.SGD(params, lr=0.01).step()
    restored = clone(model)
    restored.load_state_dict(trained.state_dict())
    for k, (a, b) in enumerate(zip(_run(trained, x, train=False), _run(restored, x, train=False))):
        check_close(b, a, where=f"{_title(model, name)}, eval mode after a train step and a state_dict round trip",
                    quantity=f"output {k}", tol=tolerance(torch.float64), axes=("sample",),
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


@single_threaded
def assert_bn_ops_follow_mode(model: nn.Module, x, *, name: str = "") -> None:
    """In eval mode no batch_norm op runs with training=True on running statistics (the 'eval ignored' bug)."""
    twin = clone(model).eval()
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


def _fuse(producer: nn.Module, bn: nn.Module) -> nn.Module | None:
    if isinstance(producer, _ConvNd):
        return fuse_conv_bn_eval(producer, bn, transpose=isinstance(producer, _ConvTransposeNd))
    if isinstance(producer, nn.Linear) and producer.out_features == getattr(bn, "num_features", None):
        return fuse_linear_bn_eval(producer, bn)
    return None


@single_threaded
def assert_fusion_matches(model: nn.Module, x, *, name: str = "") -> None:
    """Each conv/linear → BN pair, fused for inference (torch.nn.utils.fusion), gives the unfused eval output.

    Checked pair by pair on each producer's real input, so it holds for any model, not only fx-traceable ones."""
    twin = clone(model).eval()
    seen = capture(twin, x)
    pairs = []
    for bn_name, producer_name in seen.producers.items():
        producer, bn = twin.get_submodule(producer_name), twin.get_submodule(bn_name)
        if getattr(bn, "running_mean", None) is None or producer_name not in seen.producer_inputs:
            continue
        fused = _fuse(producer, bn)
        if fused is not None:
            pairs.append((producer_name, bn_name, producer, bn, fused))
    if not pairs:
        raise BNCheckSkip(f"{_title(model, name)}: no conv/linear → BN pair with running statistics to fuse")
    for producer_name, bn_name, producer, bn, fused in pairs:
        x_in = seen.producer_inputs[producer_name]
        with torch.no_grad():
            expected, got = bn(producer(x_in)), fused(x_in)
        check_close(got, expected, where=f"{_title(model, name)}: {producer_name} fused with {bn_name}",
                    quantity="eval output, fused vs unfused", tol=FUSION, axes=("sample", "channel"),
                    cause=f"{bn_name} in eval mode is not the affine map (x − running_mean)/sqrt(running_var + "
                          f"eps)·γ + β that fusion assumes (eps, statistics or formula differ)")


MODEL_CHECKS = {
    "eval_single_sample": assert_eval_single_sample,
    "eval_state": assert_eval_no_state_change,
    "train_vs_eval": assert_train_differs_from_eval,
    "state_dict_roundtrip": assert_state_dict_roundtrip,
    "bn_mode": assert_bn_ops_follow_mode,
    "fusion": assert_fusion_matches,
}
