"""Specs: the grammar (literal keyword arguments, never code), torchvision:/timm: shortcuts with the input shape their
library states, close-match suggestions, and construction under a seeded, restored generator."""

import sys

import planted.specs  # noqa: F401  (imported here: its module-level models draw on the global generator)
import pytest
import torch
import torchvision

from bncheck.core import shortcuts
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.spec import load, parse

WIDE = "planted.specs:Wide"


# --- the grammar ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, parsed", [
    ("pkg.mod:Obj", ("pkg.mod", "Obj", {})),
    ("pkg.mod:Obj.inner()", ("pkg.mod", "Obj.inner", {})),
    ("pkg.mod:Wide(width=16)", ("pkg.mod", "Wide", {"width": 16})),
    ("pkg.mod:Wide(width=16, eps=-1e-3, name='a:b', sizes=(1, 2), layers=[3], opts={'k': None}, flag=True)",
     ("pkg.mod", "Wide", {"width": 16, "eps": -1e-3, "name": "a:b", "sizes": (1, 2), "layers": [3],
                          "opts": {"k": None}, "flag": True})),
])
def test_keyword_arguments_are_python_literals(spec, parsed):
    assert parse(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("pkg.mod:Wide(width=__import__('os'))", "width=__import__('os') is not a literal"),
    ("pkg.mod:Wide(width=os.sep)", "width=os.sep is not a literal"),
    ("pkg.mod:Wide(width=16 if True else 0)", "is not a literal"),
    ("pkg.mod:Wide(16)", "name every argument, as key=literal: '16' is positional"),
    ("pkg.mod:Wide(**{'width': 16})", "no **mapping"),
    ("pkg.mod:Wide(width=", "cannot read the arguments '(width='"),
    ("pkg.mod:Wide(width=1)(eps=2)", "cannot read the arguments"),
    ("pkg.mod", "expected 'module.path:attribute', 'torchvision:NAME' or 'timm:NAME'"),
])
def test_anything_but_named_literals_is_a_one_line_error(spec, message):
    with pytest.raises(BNCheckUsageError) as info:
        parse(spec, f"--bncheck-model={spec}")
    assert str(info.value).startswith(f"--bncheck-model={spec}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_class_that_needs_arguments_says_how_to_name_them():
    with pytest.raises(BNCheckUsageError) as info:
        load(WIDE, option=None)
    assert str(info.value) == (f"{WIDE}: Wide() needs arguments (width): name them in the spec, e.g. "
                               f"'{WIDE}(width=...)' (literal keyword values), or point at a zero-argument factory")
    with pytest.raises(BNCheckUsageError, match=r"Wide\(\) got an unexpected keyword argument 'depth'"):
        load(f"{WIDE}(width=4, depth=2)")
    with pytest.raises(BNCheckUsageError, match=r"specs:net\(width=4\): net is a model, not a factory: it takes no"):
        load("planted.specs:net(width=4)", option=None)


def test_arguments_reach_the_class_and_the_factory():
    loaded = load(f"{WIDE}(width=5, eps=0.01)")
    assert loaded.model.bn.num_features == 5 and loaded.model.bn.eps == 0.01 and loaded.example_input is None
    loaded = load("planted.specs:wide_factory(width=2)")
    assert loaded.model.bn.num_features == 2
    assert loaded.example_input.shape == (4, 3, 8, 8) and loaded.shape_source == "the factory's example input"


# --- seeded construction ----------------------------------------------------------------------------------------


def test_construction_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = load(f"{WIDE}(width=4)", seed=7).model.conv.weight
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)  # another global state: the same weights all the same
    assert torch.equal(load(f"{WIDE}(width=4)", seed=7).model.conv.weight, first)
    assert not torch.equal(load(f"{WIDE}(width=4)", seed=8).model.conv.weight, first)
    torch.manual_seed(7)
    assert torch.equal(torch.nn.Conv2d(3, 4, 3, bias=False).weight, first)  # what the seed means: manual_seed(7)


# --- torchvision: and timm: -------------------------------------------------------------------------------------


def test_torchvision_shortcut_builds_random_weights_with_the_stated_shape():
    loaded = load("torchvision:resnet18(num_classes=10)")
    assert isinstance(loaded.model, torchvision.models.ResNet) and loaded.model.fc.out_features == 10
    assert loaded.input_shape == (3, 224, 224) and loaded.shape_source == "torchvision's weights transforms"
    assert loaded.example_input is None
    assert load("torchvision:models.resnet18").input_shape is None  # an attribute path of torchvision stays one


@pytest.mark.parametrize("name, shape, source", [
    ("inception_v3", (3, 299, 299), "torchvision's weights transforms"),
    ("r3d_18", (3, 16, 112, 112), "torchvision's weights transforms, 16 frames"),
    ("fasterrcnn_resnet50_fpn", (3, 224, 224), "bncheck's small image for torchvision detection models"),
    ("deeplabv3_resnet50", (3, 224, 224), "bncheck's small image for torchvision segmentation models"),
    ("raft_small", None, ""),  # two images per sample: the user gives them
])
def test_torchvision_shapes_by_kind(name, shape, source):
    module = torchvision.models.get_model_builder(name).__module__
    assert shortcuts.torchvision_shape(torchvision.models, name, module) == (shape, source)


def test_timm_shortcut_takes_the_shape_from_its_pretrained_cfg():
    pytest.importorskip("timm")
    loaded = load("timm:efficientnet_b0(num_classes=10)")
    assert loaded.model.pretrained_cfg["input_size"] == loaded.input_shape == (3, 224, 224)
    assert loaded.shape_source == "timm's pretrained_cfg" and loaded.model.get_classifier().out_features == 10


@pytest.mark.parametrize("spec, message", [
    ("torchvision:resnet181", "torchvision has no model 'resnet181'; did you mean resnet18, resnet101"),
    ("torchvision:zzzz", "torchvision has no model 'zzzz'; see torchvision's list_models()"),
    ("timm:efficientnet_b00", "timm has no model 'efficientnet_b00'; did you mean efficientnet_b0"),
    ("torchvision:resnet18(weights='DEFAULT')", "random weights and never downloads: drop weights='DEFAULT'"),
    ("timm:resnet18(pretrained=True)", "never downloads: drop pretrained=True"),
    ("torchvision:resnet18(depth=3)", "resnet18 raised TypeError: ResNet.__init__() got an unexpected keyword"),
])
def test_shortcut_mistakes_are_one_line(spec, message):
    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    with pytest.raises(BNCheckUsageError) as info:
        load(spec, option="--bncheck-model")
    assert str(info.value).startswith(f"--bncheck-model={spec}: ") and message in str(info.value)


def test_timm_missing_says_pip_install_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError, as when it is not installed
    with pytest.raises(BNCheckUsageError) as info:
        load("timm:efficientnet_b0", option=None)
    assert str(info.value) == "timm:efficientnet_b0 needs timm, which is not installed: pip install 'bncheck[zoo]'"
