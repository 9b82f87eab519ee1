"""Measures catalog.py's tables: `python -m tests.zoo.measure torchvision|timm|efficientnet_pytorch` prints one as
a Python literal (minutes on one CPU thread; the timm survey builds every timm model on the meta device first)."""

from __future__ import annotations

import itertools
import sys
import time
import warnings

import torch

from . import catalog

LADDER_2D = (32, 48, 64, 96, 128, 160, 192, 224, 256, 299)
FRAMES = tuple(range(1, 17))
FLOW_SIDES = tuple(range(8, 129, 8))
MAX_TIMM_PARAMS = 50e6  # bigger families (nasnet, pnasnet, inception_resnet_v2, vgg, vit hybrids) cost too much


def runs(build, shape: tuple[int, ...], inputs: int = 1, train: bool = True) -> bool:
    """Whether batch-2 forwards on `shape` run: in eval mode under torch.no_grad(), and in train mode if `train`."""
    try:
        model = build()
        xs = tuple(torch.randn(2, *shape) for _ in range(inputs))
        with torch.no_grad():
            model.eval()(*xs)
            if train:
                model.train()(*xs)
        return True
    except Exception:
        return False


def smallest(build_for, shapes, inputs: int = 1, train: bool = True) -> tuple[int, ...] | None:
    """The first of `shapes` whose model (build_for(shape)) runs, or None."""
    return next((shape for shape in shapes if runs(build_for(shape), shape, inputs, train)), None)


def _square(sides):
    return [(3, side, side) for side in sides]


def _video_shapes():
    combos = itertools.product(FRAMES, LADDER_2D)
    return [(3, t, side, side) for t, side in sorted(combos, key=lambda ts: (ts[0] * ts[1] ** 2, ts[0]))]


def torchvision_table() -> dict[str, tuple[int, ...]]:
    """Every BN model of torchvision -> its smallest input shape."""
    table = {}
    for name, kind in sorted(catalog._torchvision_kinds().items()):
        if not catalog.has_bn(catalog._torchvision_model(name, kind).build):
            continue
        shapes = {"video": _video_shapes(), "optical_flow": _square(FLOW_SIDES)}.get(kind, _square(LADDER_2D))
        shape = smallest(lambda s: lambda: catalog._torchvision_build(name, kind, s), shapes,  # noqa: B023
                         inputs=2 if kind == "optical_flow" else 1, train=kind != "detection")
        print(f"# {name}: {shape}", file=sys.stderr, flush=True)
        table[name] = shape
    return table


def _meta_survey(timm, name):
    """(BN-like module count, parameter count) of timm's `name`, built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return catalog.bn_count(model), sum(p.numel() for p in model.parameters())


def timm_table(candidates_per_family: int = 3) -> dict[str, tuple[int, ...]]:
    """The cheapest BN model of each timm module that runs on a small input -> that input's shape."""
    import timm

    table = {}
    for module in timm.list_modules():
        survey = {name: _meta_survey(timm, name) for name in timm.list_models(module=module)
                  if not name.startswith("test_")}  # timm's own unit-test configs, not published models
        bn_models = sorted((params, name) for name, (bns, params) in survey.items() if bns)
        if bn_models and bn_models[0][0] > MAX_TIMM_PARAMS:
            print(f"# {module}: left out, its smallest BN model {bn_models[0][1]} has"
                  f" {bn_models[0][0] / 1e6:.1f}M parameters", file=sys.stderr, flush=True)
        bn_models = [(params, name) for params, name in bn_models if params <= MAX_TIMM_PARAMS]
        if not bn_models:
            continue
        for params, name in bn_models[:candidates_per_family]:
            build = lambda n=name: timm.create_model(n, pretrained=False)  # noqa: E731
            stated = tuple(build().pretrained_cfg.get("input_size", (3, 224, 224)))
            shapes = [s for s in _square(LADDER_2D) if s[-1] < stated[-1]] + [stated]
            start = time.perf_counter()
            shape = smallest(lambda s, b=build: b, shapes)
            print(f"# {module}: {name} {params / 1e6:.2f}M params, {survey[name][0]} BN -> {shape}"
                  f" ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
            if shape:
                table[name] = shape
                break
        else:
            print(f"# {module}: no candidate ran", file=sys.stderr, flush=True)
    return table


def efficientnet_pytorch_table() -> dict[str, tuple[int, ...]]:
    """EfficientNet-PyTorch's b0 -> its smallest input shape."""
    from efficientnet_pytorch import EfficientNet

    return {"efficientnet-b0": smallest(lambda s: lambda: EfficientNet.from_name("efficientnet-b0"),
                                        _square(LADDER_2D))}


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for library in sys.argv[1:]:
        items = [f'"{name}": {shape},' for name, shape in globals()[f"{library}_table"]().items()]
        lines = [""]
        for item in items:
            if len(lines[-1]) + len(item) > 114:
                lines.append("")
            lines[-1] += f" {item}" if lines[-1] else item
        print(f"{library}: {{", *(f"    {line}" for line in lines), "}", sep="\n")
