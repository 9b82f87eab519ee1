"""The one place that copies models (and materializes their Lazy parameters), proves they are left as they were,
and keeps a check's seeding off the caller's random number generators."""

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy


def clone(module):
    """A deep copy of a module (also of a Lazy one whose parameters are still uninitialized) or of another object
    that holds tensors (an ExportedProgram)."""
    if not isinstance(module, nn.Module):
        return copy.deepcopy(module)
    from bncheck.core.wrappers import refuse_scripted  # every check copies first: a library call is refused too

    refuse_scripted(module, type(module).__name__)
    memo = {}
    for p in module.parameters():
        if is_lazy(p):
            memo[id(p)] = UninitializedParameter(requires_grad=p.requires_grad, device=p.device, dtype=p.dtype)
    for b in module.buffers():
        if is_lazy(b):
            memo[id(b)] = UninitializedBuffer(requires_grad=False, device=b.device, dtype=b.dtype)
    return copy.deepcopy(module, memo)


_SIMPLE = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _plain(value) -> bool:
    return isinstance(value, _SIMPLE) or (isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value))


def copied(module: nn.Module) -> nn.Module:
    """A deep copy of `module`, fast for a module made of tensors, plain values and such children (a BN layer):
    the checks copy each prepared layer thousands of times, and copy.deepcopy spends most of its time on the
    module's bookkeeping. Anything else (a custom __deepcopy__, other attributes) goes through copy.deepcopy."""
    if hasattr(type(module), "__deepcopy__") or any(type(p) is not nn.Parameter
                                                    for p in module._parameters.values() if p is not None):
        return copy.deepcopy(module)
    fields = {}
    for key, value in vars(module).items():
        if key == "_parameters":
            value = {k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
                     for k, p in value.items()}
        elif key == "_buffers":
            value = {k: None if b is None else b.clone() for k, b in value.items()}
        elif key == "_modules":
            value = {k: None if m is None else copied(m) for k, m in value.items()}
        elif isinstance(value, torch.Tensor):
            value = value.clone()
        elif isinstance(value, dict):
            if any(not _plain(v) and not callable(v) for v in value.values()):
                return copy.deepcopy(module)
            value = type(value)(value)
        elif isinstance(value, set) and all(_plain(v) for v in value):
            value = set(value)
        elif not _plain(value):
            return copy.deepcopy(module)
        fields[key] = value
    twin = object.__new__(type(module))
    twin.__dict__.update(fields)
    return twin


def materialized(module: nn.Module, example_input) -> nn.Module:
    """`module` (a copy: this runs it) with its Lazy parameters and buffers materialized by one eval-mode forward
    under no_grad on `example_input` (a tensor, or a tuple of positional inputs), its train/eval flags left as they
    were; untouched when nothing is lazy. Returns `module`."""
    if any(is_lazy(t) for t in [*module.parameters(), *module.buffers()]):
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        with modes_kept(module), torch.no_grad():  # in eval mode no running statistic moves
            module.eval()(*inputs)
    return module


@contextlib.contextmanager
def modes_kept(module: nn.Module):
    """A block after which every submodule's train/eval flag is as it was before, whatever the block did."""
    training = {m: m.training for m in module.modules()}
    try:
        yield module
    finally:
        for m, flag in training.items():
            m.training = flag


def without_extensions(bn: nn.Module) -> nn.Module:
    """`bn` (a copy: this edits it) with its child modules replaced by nn.Identity: the activation or dropout a
    'BN + act' layer (timm's BatchNormAct2d) carries is an extension of BN, not part of its contract."""
    for child in list(bn._modules):
        bn._modules[child] = nn.Identity()
    return bn


@contextlib.contextmanager
def private_rng(seed: int | None = None, device: torch.device | str | None = None):
    """A block whose random numbers leave the caller's generators as they were: the CPU's, and `device`'s when
    it is a CUDA device (no other GPU's, none when `device` is the CPU), are saved and restored. With `seed`,
    those generators are seeded with it inside the block (what torch.manual_seed does to them), and nothing
    else: torch.manual_seed would also seed every GPU, or queue that seeding for the caller's first CUDA call
    when CUDA is not initialized yet."""
    device = torch.device("cpu" if device is None else device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            if cuda:  # fork_rng has initialized CUDA by reading the device's state
                index = device.index if device.index is not None else torch.cuda.current_device()
                torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _fingerprint(t: torch.Tensor):
    if is_lazy(t):
        return ("lazy", type(t).__name__)
    return t.detach().clone()


def _same(a, b) -> bool:
    if a is None or b is None or type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return a == b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():  # NaN == NaN here: a NaN left where it was is no change
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


@dataclass
class Snapshot:
    """Everything a check promises not to change: state_dict values, training flags, requires_grad."""

    state: dict
    training: dict
    requires_grad: dict

    @classmethod
    def of(cls, model: nn.Module) -> "Snapshot":
        return cls(
            {k: _fingerprint(v) for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)},
            {n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
        )

    def differences(self, model: nn.Module) -> list[str]:
        """What differs in `model` from this snapshot, one line each (empty when unchanged)."""
        now = Snapshot.of(model)
        out = []
        for key in sorted(self.state.keys() | now.state.keys()):
            a, b = self.state.get(key), now.state.get(key)
            if not _same(a, b):
                out.append(f"state_dict[{key!r}] changed")
        for label, before, after in (("training", self.training, now.training),
                                     ("requires_grad", self.requires_grad, now.requires_grad)):
            for key in sorted(before.keys() | after.keys()):
                if before.get(key) != after.get(key):
                    out.append(f"{label} of {key or 'the model'!r}: {before.get(key)} -> {after.get(key)}")
        return out
