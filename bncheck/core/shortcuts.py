"""Models named by their library, as in `torchvision:resnet18` or `timm:efficientnet_b0`: built with random
weights (nothing is ever downloaded), with the input shape the library states for them."""

import difflib
import importlib
import inspect

from bncheck.core.errors import BNCheckUsageError
from bncheck.core.extras import require

LIBRARIES = ("torchvision", "timm")
VIDEO_FRAMES = 16  # the clip length torchvision's video weights are evaluated with (r3d_18, mc3_18, mvit: clip_len=16)
# torchvision's detectors resize every image themselves (to 800 pixels) and its segmentation weights' transforms to
# 520: bncheck feeds both a small image instead, which the checks need no more than.
SMALL_IMAGE = (3, 224, 224)


def build(name: str, model_name: str, kwargs: dict, where: str):
    """(model, one sample's input shape or None, where that shape comes from) for NAME:MODEL_NAME(**kwargs), NAME
    being one of LIBRARIES."""
    lib = library(name, where)
    if name == "torchvision":
        return _torchvision(lib, model_name, kwargs, where)
    return _timm(lib, model_name, kwargs, where)


EXTRAS = {"torchvision": "vision", "timm": "zoo"}  # the bncheck extra that installs each library


def library(name: str, where: str):
    """The library's module; not installed is a one-line error that says which extra installs it."""
    return require(name, extra=EXTRAS[name], feature=where)


def unknown(library: str, name: str, names: list[str], where: str) -> BNCheckUsageError:
    """The error for a model name the library does not know, with its close matches."""
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {library}'s list_models()"
    return BNCheckUsageError(f"{where}: {library} has no model {name!r}; {hint}")


def _no_download(kwargs: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if kwargs.get(key):
            raise BNCheckUsageError(f"{where}: bncheck builds models with random weights and never downloads: "
                                    f"drop {key}={kwargs[key]!r}")


def _torchvision(tv, name: str, kwargs: dict, where: str):
    models = importlib.import_module(f"{tv.__name__}.models")
    if name not in models.list_models():
        raise unknown("torchvision", name, models.list_models(), where)
    builder = models.get_model_builder(name)
    _no_download(kwargs, ("weights", "weights_backbone"), where)
    # A detector or segmenter loads ImageNet weights into its backbone unless told not to.
    nothing = {key: None for key in ("weights", "weights_backbone") if key in inspect.signature(builder).parameters}
    model = builder(**{**nothing, **kwargs})
    return (model, *torchvision_shape(models, name, builder.__module__))


def torchvision_shape(models, name: str, module: str) -> tuple[tuple[int, ...] | None, str]:
    """The input shape torchvision states for a model (its weights' transforms' crop size), by its kind."""
    kind = module.removeprefix("torchvision.models").lstrip(".").split(".")[0]
    if kind in ("detection", "segmentation"):
        return SMALL_IMAGE, f"bncheck's small image for torchvision {kind} models"
    if kind == "optical_flow":  # two images per sample: the user must give them
        return None, ""
    crop = _crop_size(models, name)
    if kind == "video":
        height, width = crop or (112, 112)
        return (3, VIDEO_FRAMES, height, width), (
            f"torchvision's weights transforms, {VIDEO_FRAMES} frames" if crop else "torchvision's video default")
    if crop:
        return (3, *crop), "torchvision's weights transforms"
    return SMALL_IMAGE, "torchvision's classification default"


def _crop_size(models, name: str) -> tuple[int, int] | None:
    try:
        crop = list(getattr(models.get_model_weights(name).DEFAULT.transforms(), "crop_size", None) or [])
    except Exception:  # a model without weights states no size
        return None
    return (crop[0], crop[-1]) if crop else None


def _timm(timm, name: str, kwargs: dict, where: str):
    if not timm.is_model(name):
        raise unknown("timm", name, timm.list_models(), where)
    _no_download(kwargs, ("pretrained",), where)
    model = timm.create_model(name, **{**kwargs, "pretrained": False})
    shape = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if shape:
        return model, tuple(shape), "timm's pretrained_cfg"
    from timm.data import resolve_model_data_config

    return model, tuple(resolve_model_data_config(model)["input_size"]), "timm's data config"
