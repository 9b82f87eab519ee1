"""Turn 'module.path:attr.sub' into a model and an example input; every mistake is a one-line error."""

import importlib
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from bncheck.core.errors import BNCheckUsageError, one_line


@dataclass(frozen=True)
class Loaded:
    spec: str
    model: nn.Module
    example_input: object  # a tensor or tuple of tensors, or None when the user gave none


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


def load(spec: str, *, option: str | None = "--bncheck-model") -> Loaded:
    """Resolve SPEC = 'module.path:attr' (dots after the colon reach nested attributes) to an nn.Module,
    a zero-argument factory of one, or a factory returning (module, example_input). Errors name `option`."""
    where = _named(option, spec)
    module_path, sep, attr_path = spec.partition(":")
    if not sep or not module_path or not attr_path:
        raise BNCheckUsageError(f"{where}: expected 'module.path:attribute', e.g. "
                                f"'torchvision.models:resnet18'")
    obj = _import(module_path, spec, option)
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise BNCheckUsageError(f"{where}: {module_path} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise BNCheckUsageError(f"{where}: {type(obj).__name__} is neither an nn.Module nor a "
                                    f"zero-argument factory of one")
        try:
            obj = obj()
        except Exception as exc:
            raise BNCheckUsageError(f"{where}: the factory raised {one_line(exc)}") from exc
    example = None
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module):
        obj, example = obj
    if not isinstance(obj, nn.Module):
        raise BNCheckUsageError(f"{where}: the factory returned {type(obj).__name__}, expected an "
                                f"nn.Module or (module, example_input)")
    if example is None:
        example = getattr(obj, "example_input", None)
    return Loaded(spec, obj, example)


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


def parse_dtype(text: str) -> torch.dtype:
    if text not in _DTYPES:
        raise BNCheckUsageError(f"expected one of {', '.join(_DTYPES)}", field="dtype", value=text)
    return _DTYPES[text]
