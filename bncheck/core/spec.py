"""Turn 'module.path:attr.sub' into a model and an example input; every mistake is a one-line error."""

import ast
import importlib
import inspect
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from bncheck.core import shortcuts
from bncheck.core.errors import BNCheckUsageError, one_line
from bncheck.core.state import private_rng
from bncheck.core.wrappers import unwrapped

SYNTAX = "'module.path:attribute', 'torchvision:NAME' or 'timm:NAME', each optionally with (key=literal, ...)"


@dataclass(frozen=True)
class Loaded:
    spec: str
    model: nn.Module
    example_input: object  # a tensor or tuple of tensors, or None when the user gave none
    input_shape: tuple[int, ...] | None = None  # one sample's shape as the model's library states it
    shape_source: str = "the example input"  # where example_input, else input_shape, came from (for the header)

    def __post_init__(self):
        # the model inside a DataParallel or torch.compile wrapper is what bncheck checks; TorchScript is refused
        object.__setattr__(self, "model", unwrapped(self.model, self.spec))


def _named(option: str | None, value: str) -> str:
    """How an error names the bad value: `--option=value` for a flag, the bare value for a positional."""
    return f"{option}={value}" if option else value


def _import(module_path: str, spec: str, option: str | None):
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        # Like `python -m pytest`: a module beside the invocation directory is importable.
        if exc.name == module_path.split(".")[0] and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
            return _import(module_path, spec, option)
        raise BNCheckUsageError(f"{_named(option, spec)}: cannot import {module_path!r} ({one_line(exc)})") from exc
    except Exception as exc:
        raise BNCheckUsageError(f"{_named(option, spec)}: importing {module_path!r} raised {one_line(exc)}") from exc


def parse(spec: str, where: str | None = None) -> tuple[str, str, dict]:
    """'pkg.mod:Obj.attr(key=literal, ...)' -> ('pkg.mod', 'Obj.attr', {key: value}). Argument values must be
    Python literals (ast.literal_eval: never evaluated as code); anything else is a one-line BNCheckUsageError."""
    where = where or spec
    target, paren, args = spec.partition("(")
    module_path, sep, attr_path = target.strip().partition(":")
    if not sep or not module_path or not attr_path:
        raise BNCheckUsageError(f"{where}: expected {SYNTAX}, e.g. 'torchvision:resnet18'")
    return module_path, attr_path, _keywords(paren + args, where) if paren else {}


def _keywords(args: str, where: str) -> dict:
    try:
        call = ast.parse(f"_{args}", mode="eval").body
    except SyntaxError:
        call = None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != "_":
        raise BNCheckUsageError(f"{where}: cannot read the arguments {args!r}: expected (key=literal, ...)")
    if call.args:
        raise BNCheckUsageError(f"{where}: name every argument, as key=literal: {ast.unparse(call.args[0])!r} is "
                                f"positional")
    kwargs = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise BNCheckUsageError(f"{where}: name every argument, as key=literal (no **mapping)")
        try:
            kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise BNCheckUsageError(f"{where}: {keyword.arg}={ast.unparse(keyword.value)} is not a literal "
                                    f"(numbers, strings, True/False/None, tuples, lists, dicts): a spec is never "
                                    f"run as code") from None
    return kwargs


def load(spec: str, *, option: str | None = None, seed: int | None = 0) -> Loaded:
    """Resolve SPEC (see `parse`; dots after the colon reach nested attributes) to an nn.Module, a factory or class
    of one called with the spec's arguments, or a factory returning (module, example_input); 'torchvision:NAME' and
    'timm:NAME' build the library's model with random weights. A factory runs with the CPU generator seeded with
    `seed` (None: unseeded) and restored after. Errors are one line naming `option`."""
    where = _named(option, spec)
    module_path, attr_path, kwargs = parse(spec, where)
    if _names_a_model(module_path, attr_path, where):
        model, shape, source = _built(attr_path, where, seed, shortcuts.build, module_path, attr_path, kwargs, where)
        return Loaded(spec, model, None, shape, source)
    obj = _resolve(module_path, attr_path, spec, option)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise BNCheckUsageError(f"{where}: {attr_path} is a model, not a factory: it takes no arguments")
        return _with_example(spec, obj, None, "the model's example_input")
    if not callable(obj):
        raise BNCheckUsageError(f"{where}: {type(obj).__name__} is neither an nn.Module nor a factory of one")
    _check_arguments(obj, kwargs, module_path, attr_path, where)
    out = _built("the factory", where, seed, obj, **kwargs)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        return _with_example(spec, out[0], out[1], "the factory's example input")
    if not isinstance(out, nn.Module):
        raise BNCheckUsageError(f"{where}: the factory returned {type(out).__name__}, expected an "
                                f"nn.Module or (module, example_input)")
    return _with_example(spec, out, None, "the model's example_input")


def _names_a_model(module_path: str, attr_path: str, where: str) -> bool:
    """'torchvision:NAME' or 'timm:NAME' is a shortcut unless NAME starts an attribute path of the library's module
    (torchvision:models.resnet18 still resolves as a path)."""
    if module_path not in shortcuts.LIBRARIES:
        return False
    return not hasattr(shortcuts.library(module_path, where), attr_path.split(".")[0])


def _resolve(module_path: str, attr_path: str, spec: str, option: str | None):
    obj = _import(module_path, spec, option)
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise BNCheckUsageError(f"{_named(option, spec)}: {module_path} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj


def _check_arguments(factory, kwargs: dict, module_path: str, attr_path: str, where: str) -> None:
    """Say how to name a factory's arguments before calling it (a TypeError from inside it would not)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin: let the call speak
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        missing = [name for name, p in signature.parameters.items() if p.default is p.empty and name not in kwargs
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not missing:
            raise BNCheckUsageError(f"{where}: {attr_path}() {exc}") from None
        example = ", ".join([f"{key}={value!r}" for key, value in kwargs.items()] + [f"{n}=..." for n in missing])
        raise BNCheckUsageError(f"{where}: {attr_path}() needs arguments ({', '.join(missing)}): name them in the "
                                f"spec, e.g. '{module_path}:{attr_path}({example})' (literal keyword values), or "
                                f"point at a zero-argument factory") from None


def _built(what: str, where: str, seed: int | None, factory, *args, **kwargs):
    """factory(*args, **kwargs) with the CPU generator seeded (and restored after): the same weights every run."""
    try:
        with private_rng(seed):
            return factory(*args, **kwargs)
    except BNCheckUsageError:
        raise
    except Exception as exc:
        raise BNCheckUsageError(f"{where}: {what} raised {one_line(exc)}") from exc


def _with_example(spec: str, model: nn.Module, example, source: str) -> Loaded:
    if example is None:
        example = getattr(model, "example_input", None)
    return Loaded(spec, model, example, None, source)


def parse_shape(text: str) -> tuple[int, ...]:
    """'3,32,32' -> (3, 32, 32): one sample's shape, without the batch dim."""
    try:
        shape = tuple(int(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise BNCheckUsageError("expected positive integers like 3,32,32 (one sample, without the batch dim)",
                                field="input_shape", value=text)
    return shape


def parse_device(text: str) -> torch.device:
    """'auto' (the GPU when there is one), 'cpu', 'cuda' or 'cuda:N'; a GPU that is not there is an error."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise BNCheckUsageError(one_line(exc), field="device", value=text) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BNCheckUsageError("no CUDA GPU is available (torch.cuda.is_available() is False); use cpu or auto",
                                    field="device", value=text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BNCheckUsageError(f"only {torch.cuda.device_count()} GPU(s) present", field="device", value=text)
    return device


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


_LOW_PRECISION = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_low_precision(text: str) -> tuple[torch.dtype, ...]:
    """'float16', 'bfloat16' or 'float16,bfloat16' -> the dtype check's low-precision input dtypes."""
    names = [n for n in text.replace(" ", "").split(",") if n]
    if not names or any(n not in _LOW_PRECISION for n in names):
        raise BNCheckUsageError("expected float16, bfloat16 or float16,bfloat16: the dtype check's low-precision "
                                "input dtypes (every other check runs in the model's own dtype)",
                                field="dtype", value=text)
    return tuple(dict.fromkeys(_LOW_PRECISION[n] for n in names))


def parse_dtype(text: str) -> torch.dtype:
    if text not in _DTYPES:
        raise BNCheckUsageError(f"expected one of {', '.join(_DTYPES)}", field="dtype", value=text)
    return _DTYPES[text]
