"""A layer under test: the user's layer (never touched), its inputs, and prepared copies to run checks on."""

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import is_lazy

from .discover import is_frozen, kind_of
from .errors import BNCheckSkip, BNCheckUsageError
from .probes import Probe, probes
from .state import clone

DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.1


@dataclass
class LayerCase:
    layer: nn.Module
    name: str
    x: torch.Tensor
    seed: int = 0
    inputs: list[Probe] = field(init=False)

    def __post_init__(self):
        x = self.x
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise BNCheckUsageError(f"{self.name}: the input must be a floating tensor (N, C, *), got "
                                    f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
        self.kind = kind_of(self.layer)
        self.frozen = is_frozen(self.layer)
        self.channels = x.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        c = self.channels
        # Non-trivial state: γ=1, β=0, mean 0, var 1 would hide whole classes of bugs.
        self.state = {
            "weight": 0.5 + 1.5 * torch.rand(c, generator=gen),
            "bias": torch.randn(c, generator=gen),
            "running_mean": torch.randn(c, generator=gen),
            "running_var": 0.5 + 2.0 * torch.rand(c, generator=gen),
        }
        probe = self.fresh()
        for key in self.state:
            t = getattr(probe, key, None)
            if isinstance(t, torch.Tensor) and t.shape != (c,):
                raise BNCheckUsageError(f"{self.name or 'layer'}: {key} has shape {tuple(t.shape)} but the input "
                                        f"has {c} channels (dim 1)")
        self.eps = float(getattr(probe, "eps", DEFAULT_EPS))
        self.momentum = getattr(probe, "momentum", DEFAULT_MOMENTUM)
        self.affine = getattr(probe, "weight", None) is not None
        self.tracks = getattr(probe, "running_mean", None) is not None
        self.has_num_batches = isinstance(getattr(probe, "num_batches_tracked", None), torch.Tensor)
        # Only torch's own BN family promises momentum=None; a from-scratch layer may not offer it.
        self.momenta = [self.momentum] + ([None] if self.momentum is not None and isinstance(probe, _NormBase) else [])
        label = f"captured input {tuple(x.shape)}" if self.name else f"input {tuple(x.shape)}"
        self.inputs = [Probe(label, x.detach().clone())] + probes(x, self.eps, self.seed)

    @property
    def title(self) -> str:
        return f"{self.name or 'layer'} ({self.kind})"

    def where(self, probe: Probe, *extra: str) -> str:
        return ", ".join([self.title, probe.label, *extra])

    def require_train_mode(self):
        if self.frozen:
            raise BNCheckSkip(f"{self.title}: a frozen BN has no train mode")

    def require_running_stats(self):
        if not self.tracks:
            raise BNCheckSkip(f"{self.title}: track_running_stats=False, no running statistics")

    def fresh(self, dtype: torch.dtype | None = None) -> nn.Module:
        """A copy of the layer on x's device, lazy parameters materialized, extension children (activation,
        dropout of 'BN + act' layers) replaced by Identity, and γ, β, running stats set to non-trivial values."""
        twin = clone(self.layer).to(self.x.device)
        for child in list(twin._modules):
            twin._modules[child] = nn.Identity()
        if any(is_lazy(t) for t in [*twin.parameters(), *twin.buffers()]):
            training = twin.training
            with torch.no_grad():
                twin.eval()(self.x.detach()[:2].float())
            twin.train(training)
        with torch.no_grad():
            for key, value in self.state.items():
                t = getattr(twin, key, None)
                if isinstance(t, torch.Tensor) and t.shape == value.shape:
                    t.copy_(value)
            nbt = getattr(twin, "num_batches_tracked", None)
            if isinstance(nbt, torch.Tensor):
                nbt.fill_(3)
        if dtype is not None:
            twin.to(dtype)
        return twin



def params(layer: nn.Module):
    """(weight, bias) of a layer; None where it has none."""
    return getattr(layer, "weight", None), getattr(layer, "bias", None)


def run(layer: nn.Module, x: torch.Tensor, *, train: bool) -> torch.Tensor:
    """The layer's output on (a copy of) x in train or eval mode, without autograd."""
    layer.train(train)
    with torch.no_grad():
        return layer(x.clone(memory_format=torch.preserve_format))
