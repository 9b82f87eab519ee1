"""A layer under test: the user's layer (never touched), its inputs, and prepared copies to run checks on."""

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import is_lazy

from bncheck.core.discover import is_frozen, kind_of
from bncheck.core.errors import BNCheckSkip, BNCheckUsageError
from bncheck.core.probes import Probe, probes
from bncheck.core.state import clone, copied, materialized, without_extensions
from bncheck.core.tolerances import LOW_PRECISION

DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.1


def nontrivial_state(channels: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """γ, β, running_mean and running_var of `channels` channels, drawn from `seed`, none of them trivial: γ=1,
    β=0, mean 0, var 1 would hide whole classes of bugs. |γ| in [0.5, 2) with both signs as trained networks have
    them (channel 0 negative, 1 positive, then alternating) and γ = 0 in channel 2; var in [0.5, 2.5)."""
    gen = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.arange(channels) % 2 == 0, -1.0, 1.0)
    if channels > 2:
        sign[2] = 0.0
    return {
        "weight": sign * (0.5 + 1.5 * torch.rand(channels, generator=gen)),
        "bias": torch.randn(channels, generator=gen),
        "running_mean": torch.randn(channels, generator=gen),
        "running_var": 0.5 + 2.0 * torch.rand(channels, generator=gen),
    }


def set_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy each of `state`'s tensors into the module's attribute of that name, where it has one of that shape
    (a layer without γ/β or running statistics keeps going without them)."""
    with torch.no_grad():
        for key, value in state.items():
            target = getattr(module, key, None)
            if isinstance(target, torch.Tensor) and target.shape == value.shape:
                target.copy_(value)


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
        if not bool(x.isfinite().all()):
            raise BNCheckUsageError(f"{self.name or 'layer'}: {nonfinite(x)}: the checks need a finite input")
        # A layer held in half (a .half() or .bfloat16() model) is checked in float32: the checks judge its
        # arithmetic against the oracle at float32's tolerance; the dtype check runs it on half inputs.
        self.held_in = x.dtype
        if x.dtype in LOW_PRECISION:
            self.x = x = x.float()
        self.kind = kind_of(self.layer)
        self.frozen = is_frozen(self.layer)
        self.channels = x.shape[1]
        c = self.channels
        self.state = nontrivial_state(c, self.seed)
        self._template = self._prepared()
        probe = self._template
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
        # Only torch's own BN family promises momentum=None; momentum=0 (statistics frozen while training) is
        # checked wherever the layer has a momentum to set.
        self.momenta = list(dict.fromkeys(
            [self.momentum] + ([None] if isinstance(probe, _NormBase) else [])
            + ([0.0] if hasattr(probe, "momentum") else [])))
        label = f"captured input {tuple(x.shape)}" if self.name else f"input {tuple(x.shape)}"
        self.inputs = [Probe(label, x.detach().clone())] + probes(x, self.eps, self.seed)

    @property
    def title(self) -> str:
        return f"{self.name or 'layer'} ({self.kind})"

    def where(self, probe: Probe, *extra: str) -> str:
        return ", ".join([self.title, probe.label, *extra])

    def modes(self, *, eval_needs_statistics: bool = False) -> list[bool]:
        """The modes a check runs the layer in (True: train): train where the layer has one (not a frozen BN), then
        eval (with eval_needs_statistics, only where it keeps running statistics)."""
        return ([] if self.frozen else [True]) + ([False] if self.tracks or not eval_needs_statistics else [])

    def eval_like_modes(self) -> list[bool]:
        """The modes that must behave as eval mode: eval, and train mode too for a frozen BN."""
        return [False, True] if self.frozen else [False]

    def require_train_mode(self):
        if self.frozen:
            raise BNCheckSkip(f"{self.title}: a frozen BN has no train mode")

    def require_running_stats(self):
        if not self.tracks:
            raise BNCheckSkip(f"{self.title}: track_running_stats=False, no running statistics")

    def _prepared(self) -> nn.Module:
        """A copy of the layer on x's device, lazy parameters materialized, extension children (activation,
        dropout of 'BN + act' layers) replaced by Identity, and γ, β, running stats set to non-trivial values."""
        twin = without_extensions(clone(self.layer).to(self.x.device))
        if self.held_in in LOW_PRECISION:
            twin.float()
        materialized(twin, self.x.detach()[:2].float())
        set_state(twin, self.state)
        with torch.no_grad():
            nbt = getattr(twin, "num_batches_tracked", None)
            if isinstance(nbt, torch.Tensor):
                nbt.fill_(3)
        return twin

    def fresh(self, dtype: torch.dtype | None = None) -> nn.Module:
        """A new copy of the prepared layer (see _prepared), in `dtype` if given: every run starts from the same
        state, and the user's layer is never touched."""
        twin = copied(self._template)
        if dtype is not None:
            twin.to(dtype)
        return twin



_CASES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def fingerprint(layer: nn.Module) -> tuple:
    """What a LayerCase is built from, beside the input: every tensor's identity and version counter (bumped by
    any in-place change) and the plain attributes (eps, momentum, ...)."""
    tensors = tuple((name, t.data_ptr(), t._version) for name, t in layer.state_dict(keep_vars=True).items()
                    if isinstance(t, torch.Tensor) and not is_lazy(t))
    plain = tuple((k, v) for k, v in vars(layer).items() if isinstance(v, (bool, int, float, str, type(None))))
    return tensors, plain


def layer_case(layer: nn.Module, name: str, x: torch.Tensor, seed: int = 0) -> LayerCase:
    """LayerCase(layer, name, x, seed), shared by the checks that run one after another on the same layer and input
    while neither changed: building one (a prepared copy, the probes) is what checks of small layers spend most on,
    and every check works on copies of its template."""
    key = (name, seed, fingerprint(layer))
    cached = _CASES.get(layer)
    if cached is not None and cached[0] == key and cached[1] is x and cached[2] == x._version:
        return cached[3]
    case = LayerCase(layer, name, x, seed)
    _CASES[layer] = (key, x, x._version, case)
    return case


def nonfinite(x: torch.Tensor) -> str:
    """'the input (8, 16, 4, 4) holds 3 NaN and 0 inf of 2048 values'."""
    return (f"the input {tuple(x.shape)} holds {int(x.isnan().sum())} NaN and {int(x.isinf().sum())} inf of "
            f"{x.numel()} values")


def params(layer: nn.Module):
    """(weight, bias) of a layer; None where it has none."""
    return getattr(layer, "weight", None), getattr(layer, "bias", None)


def run(layer: nn.Module, x: torch.Tensor, *, train: bool) -> torch.Tensor:
    """The layer's output on (a copy of) x in train or eval mode, without autograd."""
    layer.train(train)
    with torch.no_grad():
        return layer(x.clone(memory_format=torch.preserve_format))
