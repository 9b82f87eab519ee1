"""What a block of checks costs in passes: whole-model forwards, BN-layer forwards (a layer run alone) and autograd
backward calls, counted by global module hooks (torch.nn.modules.module) and a wrapped torch.autograd while the
block runs."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn.modules import module as torch_module

from bncheck.core.discover import is_batchnorm


@dataclass
class Passes:
    model_forward: int = 0  # forwards of a module with submodules (a model), called from outside any module
    layer_forward: int = 0  # forwards of a BN layer called alone
    backward: int = 0  # torch.autograd.backward and .grad calls (loss.backward(), y.backward(dy))

    def __iadd__(self, other: "Passes") -> "Passes":
        self.model_forward += other.model_forward
        self.layer_forward += other.layer_forward
        self.backward += other.backward
        return self

    def __str__(self) -> str:
        return (f"{self.model_forward} whole-model forward passes, {self.backward} backward passes, "
                f"{self.layer_forward} BN-layer forwards")


@contextlib.contextmanager
def counted() -> Iterator[Passes]:
    """A Passes filled in while the block runs (only the calls made on this thread's modules count as nested)."""
    passes, depth = Passes(), [0]

    def enter(module, args):
        if depth[0] == 0:
            if is_batchnorm(module):
                passes.layer_forward += 1
            elif next(module.children(), None) is not None:  # a model, not a lone conv run by the fusion check
                passes.model_forward += 1
        depth[0] += 1

    def leave(module, args, output):
        depth[0] -= 1

    originals = {name: getattr(torch.autograd, name) for name in ("backward", "grad")}

    def counting(original):
        def call(*args, **kwargs):
            passes.backward += 1
            return original(*args, **kwargs)
        return call

    handles = [torch_module.register_module_forward_pre_hook(enter),
               torch_module.register_module_forward_hook(leave, always_call=True)]
    for name, original in originals.items():  # Tensor.backward calls torch.autograd.backward by its attribute
        setattr(torch.autograd, name, counting(original))
    try:
        yield passes
    finally:
        for name, original in originals.items():
            setattr(torch.autograd, name, original)
        for handle in handles:
            handle.remove()
