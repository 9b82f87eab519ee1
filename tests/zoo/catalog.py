"""A catalog of real BatchNorm models from torchvision, timm, EfficientNet-PyTorch and the other libraries users bring
(transformers, segmentation_models_pytorch, MONAI, ultralytics, torch_geometric, pytorchcv, pytorch-tabnet, torch's
own QAT and InstanceNorm), each with its smallest input.

The model lists come from the libraries at call time (torchvision.models.list_models(), timm.list_modules() and
timm.list_models(module=...)); the tables below only supply input shapes (and, for timm, which one model of each
family), measured once by tests/zoo/measure.py.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class ZooModel:
    """One model of a library: how to build it with random weights, and the shape of one sample of its input."""

    id: str
    library: str
    input_shape: tuple[int, ...]
    build: Callable[[], nn.Module]
    inputs: int = 1
    # (batch_size, seed) -> the example, for inputs that are not `inputs` float tensors of one shape (a graph's
    # node features with its int64 edge_index)
    make_example: Callable[[int, int], object] | None = None
    slow: bool = False  # left out of `nox -s zoo -- --quick`

    def example(self, batch_size: int = 8, seed: int = 0):
        """A float32 tensor (batch_size, *input_shape) drawn from a generator seeded with `seed`, or a tuple of
        `inputs` such tensors (or what `make_example` makes)."""
        if self.make_example is not None:
            return self.make_example(batch_size, seed)
        generator = torch.Generator().manual_seed(seed)
        shape = (batch_size, *self.input_shape)
        xs = tuple(torch.randn(shape, generator=generator, dtype=torch.float32) for _ in range(self.inputs))
        return xs[0] if self.inputs == 1 else xs


def is_bn_like(module: nn.Module) -> bool:
    """Whether `module` keeps BN running statistics (torch's BatchNorm, FrozenBatchNorm2d, timm's BatchNormAct2d,
    ...), InstanceNorm with track_running_stats excluded."""
    return ("running_mean" in module._buffers and "running_var" in module._buffers
            and not isinstance(module, nn.modules.instancenorm._InstanceNorm))


def bn_count(model: nn.Module) -> int:
    """The number of BN-like modules in `model`."""
    return sum(map(is_bn_like, model.modules()))


class _ParametersOnMeta(TorchFunctionMode):
    """Creates the tensors of torch.empty/zeros/ones/full (parameters and buffers) on the meta device, leaving the
    rest on the CPU: torchvision's regnet computes its widths with tensors and .tolist(), which a plain
    torch.device("meta") context cannot do."""

    FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def has_bn(build: Callable[[], nn.Module]) -> bool:
    """Whether the model that `build` makes contains a BN-like module, found without allocating its weights (a
    meta-device build: the whole torchvision list is checked in seconds, not minutes)."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:
        try:
            with _ParametersOnMeta():
                model = build()
        except Exception:
            model = build()  # a real build: it works, or its own error tells why
    return bn_count(model) > 0


# --- torchvision ------------------------------------------------------------------------------------------------
# One sample's input shape per model, measured by tests/zoo/measure.py (torch 2.14.1, torchvision 0.29.1): the
# smallest on a ladder with which batch-2 forwards run in eval mode under torch.no_grad() and, except for detectors
# (their train mode wants targets), in train mode. 2-D ladder: 32, 48, 64, 96, 128, 160, 192, 224, 256, 299 (32 is
# an ImageNet network's total stride, below which its last stages only see padding-made 1x1 maps); video: (3, T, H,
# W) with the smallest T*H*W over T from 1 to 16 and H=W on the 2-D ladder; optical flow: two images, H=W the
# smallest multiple of 8. The big ones: inception_v3 at 299 (its train-mode aux head needs a 17x17 map), maxvit_t at
# 224 (7x7 attention windows after stride 32), raft_large at 128 (the 8 x 16 its correlation pyramid asks for), s3d
# at 13x224x224 (its fixed 2x7x7 average pool).
TORCHVISION_SHAPES: dict[str, tuple[int, ...]] = {
    "deeplabv3_mobilenet_v3_large": (3, 32, 32), "deeplabv3_resnet101": (3, 32, 32), "deeplabv3_resnet50": (3, 32, 32),
    "densenet121": (3, 32, 32), "densenet161": (3, 32, 32), "densenet169": (3, 32, 32), "densenet201": (3, 32, 32),
    "efficientnet_b0": (3, 32, 32), "efficientnet_b1": (3, 32, 32), "efficientnet_b2": (3, 32, 32),
    "efficientnet_b3": (3, 32, 32), "efficientnet_b4": (3, 32, 32), "efficientnet_b5": (3, 32, 32),
    "efficientnet_b6": (3, 32, 32), "efficientnet_b7": (3, 32, 32), "efficientnet_v2_l": (3, 32, 32),
    "efficientnet_v2_m": (3, 32, 32), "efficientnet_v2_s": (3, 32, 32),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (3, 32, 32), "fasterrcnn_mobilenet_v3_large_fpn": (3, 32, 32),
    "fasterrcnn_resnet50_fpn": (3, 32, 32), "fasterrcnn_resnet50_fpn_v2": (3, 32, 32), "fcn_resnet101": (3, 32, 32),
    "fcn_resnet50": (3, 32, 32), "fcos_resnet50_fpn": (3, 32, 32), "googlenet": (3, 32, 32),
    "inception_v3": (3, 299, 299), "keypointrcnn_resnet50_fpn": (3, 32, 32), "lraspp_mobilenet_v3_large": (3, 32, 32),
    "maskrcnn_resnet50_fpn": (3, 32, 32), "maskrcnn_resnet50_fpn_v2": (3, 32, 32), "maxvit_t": (3, 224, 224),
    "mc3_18": (3, 1, 32, 32), "mnasnet0_5": (3, 32, 32), "mnasnet0_75": (3, 32, 32), "mnasnet1_0": (3, 32, 32),
    "mnasnet1_3": (3, 32, 32), "mobilenet_v2": (3, 32, 32), "mobilenet_v3_large": (3, 32, 32),
    "mobilenet_v3_small": (3, 32, 32), "quantized_googlenet": (3, 32, 32), "quantized_inception_v3": (3, 299, 299),
    "quantized_mobilenet_v2": (3, 32, 32), "quantized_mobilenet_v3_large": (3, 32, 32),
    "quantized_resnet18": (3, 32, 32), "quantized_resnet50": (3, 32, 32), "quantized_resnext101_32x8d": (3, 32, 32),
    "quantized_resnext101_64x4d": (3, 32, 32), "quantized_shufflenet_v2_x0_5": (3, 32, 32),
    "quantized_shufflenet_v2_x1_0": (3, 32, 32), "quantized_shufflenet_v2_x1_5": (3, 32, 32),
    "quantized_shufflenet_v2_x2_0": (3, 32, 32), "r2plus1d_18": (3, 1, 32, 32), "r3d_18": (3, 1, 32, 32),
    "raft_large": (3, 128, 128), "regnet_x_16gf": (3, 32, 32), "regnet_x_1_6gf": (3, 32, 32),
    "regnet_x_32gf": (3, 32, 32), "regnet_x_3_2gf": (3, 32, 32), "regnet_x_400mf": (3, 32, 32),
    "regnet_x_800mf": (3, 32, 32), "regnet_x_8gf": (3, 32, 32), "regnet_y_128gf": (3, 32, 32),
    "regnet_y_16gf": (3, 32, 32), "regnet_y_1_6gf": (3, 32, 32), "regnet_y_32gf": (3, 32, 32),
    "regnet_y_3_2gf": (3, 32, 32), "regnet_y_400mf": (3, 32, 32), "regnet_y_800mf": (3, 32, 32),
    "regnet_y_8gf": (3, 32, 32), "resnet101": (3, 32, 32), "resnet152": (3, 32, 32), "resnet18": (3, 32, 32),
    "resnet34": (3, 32, 32), "resnet50": (3, 32, 32), "resnext101_32x8d": (3, 32, 32), "resnext101_64x4d": (3, 32, 32),
    "resnext50_32x4d": (3, 32, 32), "retinanet_resnet50_fpn": (3, 32, 32), "retinanet_resnet50_fpn_v2": (3, 32, 32),
    "s3d": (3, 13, 224, 224), "shufflenet_v2_x0_5": (3, 32, 32), "shufflenet_v2_x1_0": (3, 32, 32),
    "shufflenet_v2_x1_5": (3, 32, 32), "shufflenet_v2_x2_0": (3, 32, 32), "ssdlite320_mobilenet_v3_large": (3, 32, 32),
    "vgg11_bn": (3, 32, 32), "vgg13_bn": (3, 32, 32), "vgg16_bn": (3, 32, 32), "vgg19_bn": (3, 32, 32),
    "wide_resnet101_2": (3, 32, 32), "wide_resnet50_2": (3, 32, 32),
}

DEFAULT_2D = (3, 64, 64)
DEFAULT_VIDEO = (3, 8, 64, 64)


def _torchvision_kinds() -> dict[str, str]:
    """torchvision's model names -> 'classification', 'segmentation', 'detection', 'video', 'optical_flow' or
    'quantization'."""
    from torchvision import models

    kinds = dict.fromkeys(models.list_models(module=models), "classification")
    for kind in ("segmentation", "detection", "video", "optical_flow", "quantization"):
        kinds.update(dict.fromkeys(models.list_models(module=getattr(models, kind)), kind))
    return kinds


def _torchvision_build(name: str, kind: str, shape: tuple[int, ...]) -> nn.Module:
    """torchvision's `name` with random weights, its backbone's too."""
    from torchvision import models

    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None
    if kind == "detection" and not name.startswith("ssd"):
        # An R-CNN, RetinaNet or FCOS resizes every image to min_size (800 px by default) first: keeping the
        # example's own size makes one forward ~100x cheaper. SSD resizes to its fixed 300 or 320 px.
        kwargs.update(min_size=shape[-2], max_size=shape[-1])
    if kind == "quantization":
        kwargs["quantize"] = False  # the float, quantizable model (QuantStub/DeQuantStub around the float layers)
    return models.get_model(name, **kwargs)


def _torchvision_model(name: str, kind: str) -> ZooModel:
    default = DEFAULT_VIDEO if kind == "video" else DEFAULT_2D
    shape = TORCHVISION_SHAPES.get(name, default)
    return ZooModel(id=f"torchvision:{name}", library="torchvision", input_shape=shape,
                    build=functools.partial(_torchvision_build, name, kind, shape),
                    inputs=2 if kind == "optical_flow" else 1)


@functools.cache
def _torchvision_models() -> tuple[ZooModel, ...]:
    try:
        kinds = _torchvision_kinds()
    except ImportError:
        return ()
    candidates = [_torchvision_model(name, kind) for name, kind in sorted(kinds.items())]
    return tuple(zm for zm in candidates if has_bn(zm.build))


def torchvision_models() -> list[ZooModel]:
    """Every torchvision model (all of its modules) that contains a BN-like module; [] without torchvision."""
    return list(_torchvision_models())


# --- timm -------------------------------------------------------------------------------------------------------
# The cheapest BN model of each timm module (family) with its input shape, chosen and measured by
# tests/zoo/measure.py (timm 1.0.31, 59 of its 98 modules have BN models): per module, its BN models (timm's test_*
# configs left out) by parameter count, the first that runs eval and train mode at batch 2 on the smallest shape of
# the 2-D ladder above, else on timm's stated input size (fixed-size attention: halonet, levit, efficientformer,
# maxvit, visformer, volo). Left out for their cost, families whose smallest BN model has over 50M parameters:
# nasnet (nasnetalarge, 89M), pnasnet (pnasnet5large, 86M), inception_resnet_v2 (56M), vgg (vgg11_bn, 133M) and
# vision_transformer_hybrid (vit_small_resnet50d_s16_224, 58M).
TIMM_SHAPES: dict[str, tuple[int, ...]] = {
    "halonet_h1": (3, 256, 256), "mobileone_s1": (3, 32, 32), "convmixer_768_32": (3, 32, 32),
    "cpubone_nano": (3, 32, 32), "cs3darknet_focus_s": (3, 32, 32), "cspnext_tiny": (3, 32, 32),
    "densenet121": (3, 32, 32), "dla46x_c": (3, 32, 32), "dpn48b": (3, 32, 32), "efficientformer_l1": (3, 224, 224),
    "efficientformerv2_s0": (3, 224, 224), "mobilenetv2_035": (3, 32, 32), "efficientvim_m1": (3, 32, 32),
    "efficientvit_b0": (3, 32, 32), "efficientvit_m0": (3, 32, 32), "fasternet_t0": (3, 32, 32),
    "fastvit_t8": (3, 32, 32), "ghostnet_050": (3, 32, 32), "hardcorenas_b": (3, 32, 32), "hgnetv2_b0": (3, 32, 32),
    "hrnet_w18_small": (3, 32, 32), "iformer_t": (3, 32, 32), "inception_next_atto": (3, 32, 32),
    "inception_v3": (3, 96, 96), "inception_v4": (3, 96, 96), "lcnetv2_small": (3, 32, 32),
    "levit_128s": (3, 224, 224), "lowformer_b0": (3, 32, 32), "maxvit_pico_rw_256": (3, 256, 256),
    "mobilenetv3_small_050": (3, 32, 32), "mobilevit_xxs": (3, 32, 32), "nextvit_small": (3, 32, 32),
    "regnetx_002": (3, 32, 32), "repghostnet_050": (3, 32, 32), "repvit_m1": (3, 32, 32), "res2next50": (3, 32, 32),
    "resnest14d": (3, 32, 32), "resnet10t": (3, 32, 32), "resnetv2_18": (3, 32, 32), "rexnet_100": (3, 32, 32),
    "selecsls42": (3, 32, 32), "legacy_seresnet18": (3, 32, 32), "shvit_s1": (3, 32, 32), "skresnet18": (3, 32, 32),
    "starnet_s050": (3, 32, 32), "swiftformer_xs": (3, 32, 32), "tiny_vit_5m_224": (3, 32, 32),
    "tresnet_m": (3, 32, 32), "visformer_tiny": (3, 224, 224), "volo_d1_224": (3, 224, 224),
    "ese_vovnet19b_slim_dw": (3, 32, 32), "legacy_xception": (3, 32, 32), "xception41p": (3, 32, 32),
    "xcit_nano_12_p8_224": (3, 32, 32),
}


@functools.cache
def _timm_models() -> tuple[ZooModel, ...]:
    try:
        import timm
    except ImportError:
        return ()
    found = [ZooModel(id=f"timm:{name}", library="timm", input_shape=TIMM_SHAPES[name],
                      build=functools.partial(timm.create_model, name, pretrained=False))
             for module in timm.list_modules() for name in timm.list_models(module=module) if name in TIMM_SHAPES]
    return tuple(zm for zm in found if has_bn(zm.build))


def timm_models() -> list[ZooModel]:
    """One cheap BN model per timm family (module), those the installed timm has; [] without timm."""
    return list(_timm_models())


# --- EfficientNet-PyTorch ---------------------------------------------------------------------------------------
# Measured like the torchvision 2-D models.
EFFICIENTNET_PYTORCH_SHAPES: dict[str, tuple[int, ...]] = {
    "efficientnet-b0": (3, 32, 32),
}


def efficientnet_pytorch_models() -> list[ZooModel]:
    """lukemelas' EfficientNet-PyTorch b0 (its BN: momentum 1 - 0.99, eps 1e-3); [] without efficientnet_pytorch."""
    try:
        from efficientnet_pytorch import EfficientNet
    except ImportError:
        return []
    name = "efficientnet-b0"
    return [ZooModel(id=f"efficientnet_pytorch:{name}", library="efficientnet_pytorch",
                     input_shape=EFFICIENTNET_PYTORCH_SHAPES.get(name, DEFAULT_2D),
                     build=functools.partial(EfficientNet.from_name, name))]


# --- the BN models of other libraries users bring ---------------------------------------------------------------
# Each library's models with their inputs, built locally with random weights (nothing is downloaded: Hugging Face
# models from a config object, segmentation_models_pytorch with encoder_weights=None, YOLO from its bundled yaml).
# A library that is not installed contributes no model. Input shapes: the smallest on the 2-D ladder above that
# every model of the library accepts in train and eval mode (MONAI's 3-D nets: 16^3). `slow`: left out of `nox -s
# zoo -- --quick` (the quick run keeps at least one model of each library).


def _hf(model_class: str, config_class: str, **config) -> nn.Module:
    import transformers

    return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))


# model class, config class, config overrides (the defaults, except EfficientNet's: B7 at 600 px by default, here
# B0's coefficients), slow
TRANSFORMERS_MODELS: dict[str, tuple[str, str, dict, bool]] = {
    "ResNetForImageClassification": ("ResNetForImageClassification", "ResNetConfig", {}, False),
    "RegNetForImageClassification": ("RegNetForImageClassification", "RegNetConfig", {}, True),
    "MobileNetV2ForImageClassification": ("MobileNetV2ForImageClassification", "MobileNetV2Config", {}, True),
    "EfficientNetForImageClassification": ("EfficientNetForImageClassification", "EfficientNetConfig",
                                           {"width_coefficient": 1.0, "depth_coefficient": 1.0, "hidden_dim": 1280,
                                            "image_size": 224}, True),
    # BiT normalizes with GroupNorm and standardizes its conv weights with a functional batch_norm (no running
    # statistics): a model without a BN layer, where only the model checks that need none run
    "BitForImageClassification": ("BitForImageClassification", "BitConfig", {}, True),
}


def transformers_models() -> list[ZooModel]:
    """Hugging Face transformers' CNNs, each built from its config (a ModelOutput result); [] without it."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return []
    return [ZooModel(id=f"transformers:{name}", library="transformers", input_shape=(3, 32, 32),
                     build=functools.partial(_hf, model_class, config_class, **config), slow=slow)
            for name, (model_class, config_class, config, slow) in TRANSFORMERS_MODELS.items()]


def _smp(architecture: str, encoder: str) -> nn.Module:
    import segmentation_models_pytorch as smp

    return getattr(smp, architecture)(encoder_name=encoder, encoder_weights=None, classes=2)


SMP_MODELS = [(arch, encoder) for arch in ("Unet", "FPN", "DeepLabV3Plus") for encoder in ("resnet18", "mobilenet_v2")]


def smp_models() -> list[ZooModel]:
    """segmentation_models_pytorch's Unet, FPN and DeepLabV3+ on resnet18 and mobilenet_v2 encoders (random
    weights); [] without it."""
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return []
    return [ZooModel(id=f"segmentation_models_pytorch:{arch}-{encoder}", library="segmentation_models_pytorch",
                     input_shape=(3, 64, 64), build=functools.partial(_smp, arch, encoder),
                     slow=(arch, encoder) != ("Unet", "resnet18"))
            for arch, encoder in SMP_MODELS]


def _monai(name: str, **kwargs) -> nn.Module:
    from monai.networks import nets

    return getattr(nets, name)(**kwargs)


# id -> (network class, its arguments, one sample's shape, slow); norm="batch" (norm_name for DynUNet; DenseNet121 and
# resnet10 normalize with BN by default)
MONAI_MODELS: dict[str, tuple[str, dict, tuple[int, ...], bool]] = {
    "UNet-2d": ("UNet", dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32, 64),
                             strides=(2, 2, 2), num_res_units=2, norm="batch"), (1, 32, 32), False),
    "UNet-3d": ("UNet", dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                             num_res_units=2, norm="batch"), (1, 16, 16, 16), False),
    "BasicUNet-3d": ("BasicUNet", dict(spatial_dims=3, in_channels=1, out_channels=2, features=(8, 8, 16, 32, 64, 8),
                                       norm="batch"), (1, 16, 16, 16), True),
    "SegResNet-3d": ("SegResNet", dict(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8, norm="batch"),
                     (1, 16, 16, 16), True),
    "DynUNet-3d": ("DynUNet", dict(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=(3, 3, 3),
                                   strides=(1, 2, 2), upsample_kernel_size=(2, 2), norm_name="batch",
                                   filters=(8, 16, 32)), (1, 16, 16, 16), True),
    "DenseNet121-2d": ("DenseNet121", dict(spatial_dims=2, in_channels=1, out_channels=2), (1, 32, 32), True),
    "resnet10-3d": ("resnet10", dict(spatial_dims=3, n_input_channels=1, num_classes=2), (1, 16, 16, 16), True),
}


def monai_models() -> list[ZooModel]:
    """MONAI's 2-D and 3-D networks with BN; [] without monai."""
    try:
        import monai  # noqa: F401
    except ImportError:
        return []
    return [ZooModel(id=f"monai:{name}", library="monai", input_shape=shape,
                     build=functools.partial(_monai, cls, **kwargs), slow=slow)
            for name, (cls, kwargs, shape, slow) in MONAI_MODELS.items()]


def _offline_ultralytics() -> None:
    """ultralytics asks DNS whether it is online at import and writes a settings file under ~/.config: neither."""
    import os
    import tempfile

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "bncheck-zoo-ultralytics"))


def _yolo(task: str, cfg: str) -> nn.Module:
    _offline_ultralytics()
    from ultralytics.nn import tasks

    return getattr(tasks, task)(cfg, verbose=False)


# id (its bundled yaml) -> the ultralytics.nn.tasks class, slow. A detector's train-mode output is the raw head maps,
# its eval-mode output the decoded boxes with them.
ULTRALYTICS_MODELS: dict[str, tuple[str, bool]] = {
    "yolov8n.yaml": ("DetectionModel", False),
    "yolov8n-seg.yaml": ("SegmentationModel", True),
    "yolov8n-cls.yaml": ("ClassificationModel", True),
    "yolo11n.yaml": ("DetectionModel", True),
}


def ultralytics_models() -> list[ZooModel]:
    """ultralytics YOLO models built from their bundled yaml (random weights); [] without ultralytics."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        return []
    return [ZooModel(id=f"ultralytics:{cfg.removesuffix('.yaml')}", library="ultralytics", input_shape=(3, 64, 64),
                     build=functools.partial(_yolo, task, cfg), slow=slow)
            for cfg, (task, slow) in ULTRALYTICS_MODELS.items()]


GRAPH_FEATURES = 16


def graph_example(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, edge_index) of one random graph: batch_size nodes with GRAPH_FEATURES float32 features, each node
    joined to the next (a ring, both ways) and to one random other node: an int64 (2, E) edge_index."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, GRAPH_FEATURES, generator=generator)
    nodes = torch.arange(batch_size)
    ring = torch.stack([nodes, (nodes + 1) % batch_size])
    extra = torch.stack([nodes, torch.randint(0, batch_size, (batch_size,), generator=generator)])
    edges = torch.cat([ring, ring.flip(0), extra], dim=1)
    return x, edges


def _pyg(name: str) -> nn.Module:
    from torch_geometric.nn import models

    return getattr(models, name)(in_channels=GRAPH_FEATURES, hidden_channels=32, num_layers=3, out_channels=4,
                                 norm="batch_norm")


class _GCNWithBatchNorm1d(nn.Module):
    """GCNConv → torch's own BatchNorm1d over node features → ReLU, twice, then a linear head: the hand-written
    pattern of PyG's examples."""

    def __init__(self):
        from torch_geometric.nn import GCNConv

        super().__init__()
        self.conv1, self.bn1 = GCNConv(GRAPH_FEATURES, 32), nn.BatchNorm1d(32)
        self.conv2, self.bn2 = GCNConv(32, 32), nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x, edge_index):
        x = self.bn1(self.conv1(x, edge_index)).relu()
        x = self.bn2(self.conv2(x, edge_index)).relu()
        return self.head(x)


PYG_MODELS = ("GCN", "GIN", "GraphSAGE")


def torch_geometric_models() -> list[ZooModel]:
    """torch_geometric GNNs with BN over node features, on (x, edge_index); [] without torch_geometric. A batch
    here is one graph of batch_size nodes."""
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        return []
    found = [ZooModel(id=f"torch_geometric:{name}", library="torch_geometric", input_shape=(GRAPH_FEATURES,),
                      build=functools.partial(_pyg, name), inputs=2, make_example=graph_example, slow=name != "GCN")
             for name in PYG_MODELS]
    return found + [ZooModel(id="torch_geometric:GCNConv+BatchNorm1d", library="torch_geometric",
                             input_shape=(GRAPH_FEATURES,), build=_GCNWithBatchNorm1d, inputs=2,
                             make_example=graph_example, slow=True)]


def _pytorchcv(name: str) -> nn.Module:
    from pytorchcv.model_provider import get_model

    return get_model(name, pretrained=False)


# name -> one sample's shape, slow: its CIFAR-10 models (32x32) of each family, and two ImageNet ones (their fixed
# 7x7 final pool wants 224)
PYTORCHCV_MODELS: dict[str, tuple[tuple[int, ...], bool]] = {
    "resnet20_cifar10": ((3, 32, 32), False),
    "preresnet20_cifar10": ((3, 32, 32), True),
    "seresnet20_cifar10": ((3, 32, 32), True),
    "densenet40_k12_cifar10": ((3, 32, 32), True),
    "diaresnet20_cifar10": ((3, 32, 32), True),
    "shakeshakeresnet20_2x16d_cifar10": ((3, 32, 32), True),
    "xdensenet40_2_k24_bc_cifar10": ((3, 32, 32), True),
    "mobilenetv2_wd4": ((3, 224, 224), True),
    "shufflenetv2_wd2": ((3, 224, 224), True),
}


def pytorchcv_models() -> list[ZooModel]:
    """pytorchcv's models (pretrained=False); [] without pytorchcv."""
    try:
        import pytorchcv  # noqa: F401
    except ImportError:
        return []
    return [ZooModel(id=f"pytorchcv:{name}", library="pytorchcv", input_shape=shape,
                     build=functools.partial(_pytorchcv, name), slow=slow)
            for name, (shape, slow) in PYTORCHCV_MODELS.items()]


TABNET_FEATURES = 16


def _tabnet(virtual_batch_size: int) -> nn.Module:
    from pytorch_tabnet.tab_network import TabNet
    from pytorch_tabnet.utils import create_group_matrix

    # as its TabNetClassifier builds it: no categorical features, one attention group per feature
    return TabNet(TABNET_FEATURES, 4, n_d=8, n_a=8, n_steps=3, virtual_batch_size=virtual_batch_size,
                  group_attention_matrix=create_group_matrix([], TABNET_FEATURES))


def tabnet_models() -> list[ZooModel]:
    """pytorch-tabnet's TabNet, its ghost BN over virtual batches of 4 (2 per batch of 8) and of 128 (its default:
    one); [] without pytorch_tabnet. Its forward returns (logits, the batch's sparsity loss)."""
    try:
        import pytorch_tabnet  # noqa: F401
    except ImportError:
        return []
    return [ZooModel(id=f"pytorch_tabnet:TabNet-vbs{vbs}", library="pytorch_tabnet", input_shape=(TABNET_FEATURES,),
                     build=functools.partial(_tabnet, vbs), slow=vbs != 4) for vbs in (4, 128)]


class _ConvBnReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(self.quant(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.dequant(self.fc(self.pool(x).flatten(1)))


def qat_conv_bn_relu() -> nn.Module:
    """conv-bn-relu blocks fused (fuse_modules_qat) and prepared for quantization-aware training (prepare_qat,
    fbgemm's default QAT qconfig): torch.ao.nn.intrinsic.qat.ConvBnReLU2d, whose BN is its child `bn`."""
    from torch.ao import quantization as tq

    model = _ConvBnReLU().train()
    tq.fuse_modules_qat(model, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"]], inplace=True)
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    return tq.prepare_qat(model, inplace=True)


class _WithTrackedInstanceNorm(nn.Module):
    """conv → BatchNorm2d → ReLU → conv → InstanceNorm2d(affine=True, track_running_stats=True): the instance norm
    has running buffers but is not BN, and must not be checked as BN."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)

    def forward(self, x):
        return self.inorm(self.conv2(self.bn(self.conv1(x)).relu()))


class _OnlyTrackedInstanceNorm(nn.Module):
    """conv → InstanceNorm2d(track_running_stats=True) → ReLU → linear: no BN layer at all."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, track_running_stats=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.inorm(self.conv(x)).relu().mean((2, 3)))


def torch_models() -> list[ZooModel]:
    """Plain torch: a QAT-prepared model, and InstanceNorm2d(track_running_stats=True) next to / without BN."""
    return [ZooModel(id="torch:qat_conv_bn_relu", library="torch", input_shape=(3, 32, 32), build=qat_conv_bn_relu),
            ZooModel(id="torch:bn_then_tracked_instancenorm", library="torch", input_shape=(3, 32, 32),
                     build=_WithTrackedInstanceNorm),
            ZooModel(id="torch:tracked_instancenorm_only", library="torch", input_shape=(3, 32, 32),
                     build=_OnlyTrackedInstanceNorm, slow=True)]


OTHER_LIBRARIES: dict[str, Callable[[], list[ZooModel]]] = {
    "transformers": transformers_models, "segmentation_models_pytorch": smp_models, "monai": monai_models,
    "ultralytics": ultralytics_models, "torch_geometric": torch_geometric_models, "pytorchcv": pytorchcv_models,
    "pytorch_tabnet": tabnet_models, "torch": torch_models,
}


def other_models() -> list[ZooModel]:
    """The models of the other libraries, those installed."""
    return [zm for models in OTHER_LIBRARIES.values() for zm in models()]


def zoo() -> list[ZooModel]:
    """Every model of the catalog: torchvision's, timm's, EfficientNet-PyTorch's, then the other libraries'."""
    return torchvision_models() + timm_models() + efficientnet_pytorch_models() + other_models()


def model(model_id: str) -> ZooModel:
    """One model by id, without surveying the whole zoo (which builds every candidate on the meta device)."""
    library, _, name = model_id.partition(":")
    if library == "torchvision":
        return _torchvision_model(name, _torchvision_kinds()[name])
    if library == "timm":
        import timm

        return ZooModel(id=model_id, library="timm", input_shape=TIMM_SHAPES.get(name, DEFAULT_2D),
                        build=functools.partial(timm.create_model, name, pretrained=False))
    if library in OTHER_LIBRARIES:
        (found,) = [zm for zm in OTHER_LIBRARIES[library]() if zm.id == model_id]
        return found
    (found,) = [zm for zm in efficientnet_pytorch_models() if zm.id == model_id]
    return found


# A quick subset: 2-D classifiers with and without depthwise/SE blocks, a detector (the cheapest), timm's
# BatchNormAct2d, and BatchNorm3d.
QUICK: tuple[str, ...] = (
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_small",
    "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
    "timm:mobilenetv3_small_050",
    "torchvision:r3d_18",
)


def quick_ids() -> list[str]:
    """`nox -s zoo -- --quick`: QUICK, EfficientNet-PyTorch's model and every other library's models not marked
    slow (at least one per library), those installed."""
    return list(QUICK) + [zm.id for zm in efficientnet_pytorch_models() + other_models() if not zm.slow]


if __name__ == "__main__":
    import time
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # googlenet's and inception_v3's init notice
    torch.set_num_threads(1)
    total = 0.0
    models = zoo()
    for zm in models:
        model = zm.build().eval()
        x = zm.example(batch_size=2)
        start = time.perf_counter()
        with torch.no_grad():
            model(*x) if zm.inputs > 1 else model(x)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{zm.id:52} {str(zm.input_shape):18} {bn_count(model):4d} BN {seconds:7.3f} s", flush=True)
        del model
    print(f"{len(models)} models ({len(torchvision_models())} torchvision, {len(timm_models())} timm,"
          f" {len(efficientnet_pytorch_models())} efficientnet_pytorch), eval forwards at batch 2: {total:.1f} s")
