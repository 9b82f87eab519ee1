"""Lints: legal PyTorch that is almost certainly a BatchNorm mistake. Findings, not failures."""

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from bncheck.checks.registry import ScopeTable, check
from bncheck.core.capture import capture
from bncheck.core.discover import find_batchnorms, is_frozen, sequential_pairs
from bncheck.core.errors import BNCheckWarning


@dataclass(frozen=True)
class Finding:
    lint: str  # which lint: redundant_bias, keras_momentum, frozen_affine
    layer: str  # the BN layer's qualified name
    message: str
    wasted_parameters: int = 0

    def __str__(self) -> str:
        return self.message


def _has_bias(module: nn.Module) -> bool:
    return isinstance(module, (_ConvNd, nn.Linear)) and isinstance(module.bias, torch.Tensor)


def find_redundant_bias(model: nn.Module, example_input=None, *, producers: dict[str, str] | None = None
                        ) -> list[Finding]:
    """Conv/linear layers with a bias whose output feeds a (non-frozen) BN directly: β absorbs the bias.

    With an example input (or a model.example_input attribute) the producer of each BN input is found by
    tensor identity during one forward of a copy, for any model (or taken from `producers`, BN name → producer
    name, of a `capture` already made); without either, only adjacent layers of nn.Sequential containers are
    seen."""
    if example_input is None:
        example_input = getattr(model, "example_input", None)
    if producers is None and example_input is not None:
        producers = capture(model, example_input).producers
    if producers is not None:
        pairs = [(producer, bn) for bn, producer in producers.items()]
    else:
        pairs = list(sequential_pairs(model))
    bns = find_batchnorms(model)
    findings = []
    for producer_name, bn_name in pairs:
        producer = model.get_submodule(producer_name)
        bn = bns.get(bn_name)
        if bn is None or is_frozen(bn) or not _has_bias(producer):
            continue
        wasted = producer.bias.numel()
        findings.append(Finding(
            "redundant_bias", bn_name,
            f"{producer_name} ({type(producer).__name__}) has a bias whose output feeds {bn_name} "
            f"({type(bn).__name__}) directly: BN subtracts the batch mean, so the bias is redundant "
            f"({wasted} wasted parameters; β absorbs it). Fix: {type(producer).__name__}(..., bias=False).",
            wasted))
    return findings


def find_keras_momentum(model: nn.Module) -> list[Finding]:
    """BN layers with momentum > 0.5: the Keras/TF convention (0.99 keeps the old value) written into PyTorch."""
    findings = []
    for name, bn in find_batchnorms(model).items():
        m = getattr(bn, "momentum", None)
        if isinstance(m, (int, float)) and m > 0.5:
            findings.append(Finding(
                "keras_momentum", name,
                f"{name} has momentum={m:g}: PyTorch weights the NEW batch by momentum, so the running statistics "
                f"keep only {1 - m:.2g} of their history. Keras/TF's momentum={m:g} is PyTorch's "
                f"momentum={1 - m:.2g}."))
    return findings


def find_frozen_affine_training(model: nn.Module) -> list[Finding]:
    """BN layers whose γ/β are frozen (requires_grad=False) while train mode still updates their running stats."""
    findings = []
    for name, bn in find_batchnorms(model).items():
        params = [p for p in (getattr(bn, "weight", None), getattr(bn, "bias", None)) if isinstance(p, nn.Parameter)]
        tracking = getattr(bn, "running_mean", None) is not None
        if bn.training and tracking and params and not any(p.requires_grad for p in params):
            findings.append(Finding(
                "frozen_affine", name,
                f"{name}: γ/β are frozen (requires_grad=False) but the layer is in train mode and still updates "
                f"its running statistics: requires_grad does not freeze BN. Call .eval() on it after every "
                f"model.train(), or replace it with a frozen BN (torchvision.ops.FrozenBatchNorm2d)."))
    return findings


# Each lint by name: f(model, example_input, producers) -> findings (producers: a capture's BN -> producer map).
check("lint_redundant_bias", scope="lint")(
    lambda model, x, producers: find_redundant_bias(model, x, producers=producers))
check("lint_keras_momentum", scope="lint")(lambda model, x, producers: find_keras_momentum(model))
check("lint_frozen_affine", scope="lint")(lambda model, x, producers: find_frozen_affine_training(model))
LINTS = ScopeTable("lint", "lint_")


def lint(model: nn.Module, example_input=None, *, producers: dict[str, str] | None = None) -> list[Finding]:
    """Every lint's findings for `model`."""
    return [f for check in LINTS.values() for f in check(model, example_input, producers)]


def warn(findings: list[Finding], stacklevel: int = 2) -> None:
    """Emit each finding as a BNCheckWarning (so `-W error::bncheck.BNCheckWarning` turns them into errors)."""
    for finding in findings:
        warnings.warn(finding.message, BNCheckWarning, stacklevel=stacklevel)
