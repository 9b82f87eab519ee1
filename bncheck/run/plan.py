"""What bncheck runs on one model: every layer check on every BN layer, the model checks and the lints.

The user's model is only ever cloned: the work happens on a copy moved to the chosen device."""

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bncheck.checks import lints
from bncheck.checks.registry import SCOPES, Check, checks
from bncheck.core.capture import capture
from bncheck.core.discover import find_batchnorms, kind_of, layer_label
from bncheck.core.errors import (
    BNCheckError,
    BNCheckSkip,
    BNCheckUsageError,
    BNCheckWarning,
    BNConformanceWarning,
    one_line,
)
from bncheck.core.harness import nonfinite
from bncheck.core.spec import Loaded
from bncheck.core.state import clone, materialized
from bncheck.core.tolerances import dtype_name
from bncheck.run.settings import Settings
from bncheck.syncbn.targets import check_model_layer, syncbn_targets
from bncheck.training import convergence_item  # noqa: F401  (registers the convergence item)


@dataclass(frozen=True)
class Case:
    """One runnable check: `name` is stable across runs (the test id), `layer` is None for model-level ones."""

    name: str
    layer: str | None
    run: Callable[[], None]


_SEVERAL_INPUTS = (" (a model that takes several inputs needs them as a tuple: a factory returning (module, "
                   "(input1, input2, ...)), or an `example_input` tuple attribute)")
SLICE_SAMPLES, SLICE_POSITIONS = 4, 32


def representative(x: torch.Tensor) -> torch.Tensor:
    """The leading slice of a captured input that the per-layer checks run on: at most SLICE_SAMPLES samples and
    SLICE_POSITIONS positions along each spatial dim, all channels. BN's contract holds for every batch, so a slice
    of the real input tests a layer as well as the whole does, with the real values, at a bounded cost (a detector's
    512 RoIs per image, a video model's (8, 64, 13, 105, 105))."""
    return x[(slice(0, SLICE_SAMPLES), slice(None)) + (slice(0, SLICE_POSITIONS),) * (x.dim() - 2)].clone()


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model is held in: its first floating parameter or buffer's (float32 when it has none)."""
    return next((t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), torch.float32)


def header(spec: str, model: nn.Module, settings: Settings, inputs: str) -> str:
    """'bncheck: SPEC on cpu, float32 (dtype check: float16, bfloat16), torch 2.x; INPUTS, seed 0; 2 BN layers
    (BatchNorm1d: 1, BatchNorm2d: 1)': the dtype every check runs in, the dtype check's own, and INPUTS
    (`input_label`'s)."""
    layers = find_batchnorms(model)
    kinds = Counter(kind_of(m).split(",")[0] for m in layers.values())
    found = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) or "none"
    low = ", ".join(map(dtype_name, settings.dtype))
    return (f"bncheck: {spec} on {settings.device}, {dtype_name(model_dtype(model))} (dtype check: {low}), torch "
            f"{torch.__version__}; {inputs}, seed {settings.seed}; {len(layers)} BN layers ({found})")


def _shapes(example) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in (example if isinstance(example, tuple) else (example,))
            if isinstance(t, torch.Tensor)]


def input_label(example, source: str) -> str:
    """'input 3,224,224 (timm's pretrained_cfg), batch 8': one sample's shape per input, as the input-shape options
    take it, and where it came from."""
    shapes = [s for s in _shapes(example) if s]
    per_sample = " + ".join(",".join(map(str, s[1:])) for s in shapes)
    return f"input {per_sample} ({source}), batch {shapes[0][0]}" if shapes else f"input ({source})"


def example_input(loaded: Loaded, settings: Settings, shape_option: str) -> tuple[object, str]:
    """(the example input, on the CPU as given, and where it came from): the input-shape setting's random batch,
    else the spec's example input, else a random batch of the shape its library states; else a usage error that
    names `shape_option`."""
    shape, source = settings.input_shape, shape_option.rstrip("= ")
    if shape is None and loaded.example_input is not None:
        return loaded.example_input, loaded.shape_source
    if shape is None:
        shape, source = loaded.input_shape, loaded.shape_source
    if shape is None:
        raise BNCheckUsageError(f"{loaded.spec}: no input shape: pass {shape_option}C,H,W "
                                f"(one sample, without the batch dim), give the model an `example_input` "
                                f"attribute, or return (module, example_input) from the factory")
    gen = torch.Generator().manual_seed(settings.seed)
    return torch.randn((settings.batch_size, *shape), generator=gen), source


def on_device(given, model: nn.Module, device: torch.device):
    """The example input on `device`, its floating tensors in the dtype `model` is held in (float64, or half): as its
    user would feed it."""
    dtype = next((t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None)

    def to(t):
        return t.to(device, dtype if dtype is not None and t.is_floating_point() else t.dtype)
    return tuple(map(to, given)) if isinstance(given, tuple) else to(given)


def rejected(spec: str, example, cause: BaseException) -> str:
    """'SPEC: the model rejected the example input (8, 3, 8, 8): RuntimeError: boom', with a hint on several
    inputs when the forward wanted other arguments (a TypeError)."""
    shapes = ", ".join(map(str, _shapes(example)))
    several = isinstance(cause, TypeError) and not isinstance(example, tuple)
    return (f"{spec}: the model rejected the example input {shapes}: {one_line(cause)}"
            + (_SEVERAL_INPUTS if several else ""))


def check_runs(loaded: Loaded, settings: Settings, shape_option: str = "input_shape=") -> str:
    """One eval-mode forward of a copy on the example input, under no_grad: a usage error naming the spec and the
    input when the model rejects it (what pytest-xdist's controller checks before its workers build the plans).
    Returns the header's input label."""
    given, source = example_input(loaded, settings, shape_option)
    twin = clone(loaded.model).to(settings.device)
    example = on_device(given, twin, settings.device)
    try:
        with torch.no_grad():
            materialized(twin, example).eval()(*(example if isinstance(example, tuple) else (example,)))
    except Exception as exc:
        raise BNCheckUsageError(rejected(loaded.spec, example, exc)) from None
    return input_label(example, source)


class Plan:
    def __init__(self, loaded: Loaded, settings: Settings, *, shape_option: str = "input_shape="):
        self.spec = loaded.spec
        self.model = loaded.model  # the user's object: never run, never modified
        self.settings = settings
        self.work = clone(self.model).to(settings.device)
        given, self.input_source = example_input(loaded, settings, shape_option)
        self.example = on_device(given, self.work, settings.device)
        self.layers = find_batchnorms(self.model)
        self.train_error = None  # why the model does not run in train mode on the example input, if it does not
        try:
            captured = self._capture()
        except BNCheckUsageError as exc:
            raise BNCheckUsageError(rejected(self.spec, self.example, exc.__cause__ or exc)) from None
        self.inputs = {name: representative(x) for name, x in captured.inputs.items()}
        self.producers = captured.producers
        self.output = captured.output
        # The first BN (in forward order) whose input is not finite: every check of it and after it would fail.
        self.nonfinite = next(((name, x) for name, x in captured.inputs.items() if not bool(x.isfinite().all())),
                              None)

    def _capture(self):
        """The BN layers' inputs in one forward pass of a copy (Lazy parameters materialized first, in place)."""
        try:
            materialized(self.work, self.example)
        except Exception as exc:
            raise BNCheckUsageError(one_line(exc)) from exc
        try:
            return capture(self.work, self.example)
        except BNCheckUsageError as exc:
            # A model that needs more than an input in train mode (a detector wants targets) still runs in eval
            # mode: its BN layers' inputs come from there, and the checks that must train it skip.
            if not any(m.training for m in self.work.modules()):
                raise
            try:
                captured = capture(self.work, self.example, train=False)
            except BNCheckUsageError:
                raise exc from exc.__cause__  # the train-mode error, caused by the model's own exception
            self.train_error = one_line(exc.__cause__ or exc)
            return captured

    def header(self) -> str:
        return header(self.spec, self.model, self.settings, input_label(self.example, self.input_source)) + (
            f"; inputs captured in eval mode (train mode: {self.train_error})" if self.train_error else "") + (
            "; no BN layer found: only the model checks that need none run" if not self.layers else "")

    def planned(self) -> list[Check]:
        """The registered checks these settings ask for: layer checks, model checks, lints, then the opt-in ones."""
        every = [c for scope in SCOPES for c in checks(scope)]
        return ([c for c in every if c.option is None]
                + [c for c in every if c.option is not None and getattr(self.settings, c.option)])

    def cases(self) -> list[Case]:
        planned = self.planned()
        if not self.layers:
            return [Case("no_batchnorm", None, self._no_batchnorm)] + [
                Case(c.name, None, self._model_check(c)) for c in planned
                if c.scope == "model" and not c.needs_batchnorm]
        if self.nonfinite is not None:
            return [Case("finite_input", self.nonfinite[0], self._nonfinite)]
        cases = [Case(f"{c.name}[{layer_label(name)}]", name, self._layer_check(c, name))
                 for name in self.layers for c in planned if c.scope == "layer"]
        cases += [Case(c.name, None, self._model_check(c)) for c in planned if c.scope != "layer"]
        cases += [Case(f"syncbn[{layer_label(name)}]", name, self._syncbn(name))
                  for name in syncbn_targets(self.model, convert=self.settings.syncbn)]
        return cases

    def _syncbn(self, name: str):
        def run():
            x = self.inputs.get(name)
            if x is None:
                raise BNCheckSkip(f"{layer_label(name)} was not called in the forward pass on the example input")
            check_model_layer(self.spec, name, tuple(x.shape[1:]), convert=self.settings.syncbn,
                              seed=self.settings.seed)
        return run

    def _nonfinite(self):
        name, x = self.nonfinite
        raise BNCheckError(f"{self.spec}: {layer_label(name)} ({kind_of(self.work.get_submodule(name))}): "
                           f"{nonfinite(x)} in the forward pass on the example input, so no check can judge it or "
                           f"any layer after it. Likely cause: the model produces NaN/inf before this layer (an "
                           f"overflow, a log or division of zero, uninitialized weights); check the layers before it")

    def _no_batchnorm(self):
        raise BNCheckSkip(f"{self.spec}: no BatchNorm layer found (torch BN, Lazy, Sync, frozen or BN-like)")

    def _kwargs(self, check: Check) -> dict:
        return {keyword: getattr(self.settings, setting) for setting, keyword in check.settings}

    def _judged(self, call: Callable[[], None]) -> None:
        """call(), its BNCheckWarnings failing where the settings say so (strict: every one; torch_conformance:
        those of torch conformance)."""
        with warnings.catch_warnings():
            if self.settings.strict:
                warnings.simplefilter("error", BNCheckWarning)
            elif self.settings.torch_conformance:
                warnings.simplefilter("error", BNConformanceWarning)
            try:
                call()
            except BNConformanceWarning as exc:
                raise BNCheckError(f"{exc} (a warning by default: it fails under strict or torch "
                                   f"conformance)") from None
            except BNCheckWarning as exc:
                raise BNCheckError(f"{exc} (a warning by default: it fails under strict)") from None

    def _layer_check(self, check: Check, name: str):
        def run():
            x = self.inputs.get(name)
            if x is None:
                raise BNCheckSkip(f"{layer_label(name)} was not called in the forward pass on the example input")
            self._judged(lambda: check.function(self.work.get_submodule(name), x, name=layer_label(name),
                                                seed=self.settings.seed, **self._kwargs(check)))
        return run

    def _model_check(self, check: Check):
        def run():
            if self.train_error is not None and check.trains_model:
                raise BNCheckSkip(f"{self.spec}: the model does not run in train mode on the example input "
                                  f"({self.train_error})")
            if check.scope == "model":
                self._judged(lambda: check.function(self.work, self.example, name=self.spec, **self._kwargs(check)))
                return
            findings = check.function(self.work, self.example, self.producers)
            if findings and self.settings.strict:
                raise BNCheckError(f"{self.spec}: {check.name} failed under strict: " + " | ".join(map(str, findings)))
            lints.warn(findings, stacklevel=3)
        return run
