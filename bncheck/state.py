"""The one place that copies models and proves they are left as they were."""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy


def clone(module: nn.Module) -> nn.Module:
    """A deep copy that also works on Lazy modules whose parameters are still uninitialized."""
    memo = {}
    for p in module.parameters():
        if is_lazy(p):
            memo[id(p)] = UninitializedParameter(requires_grad=p.requires_grad, device=p.device, dtype=p.dtype)
    for b in module.buffers():
        if is_lazy(b):
            memo[id(b)] = UninitializedBuffer(requires_grad=False, device=b.device, dtype=b.dtype)
    return copy.deepcopy(module, memo)


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
