"""Ablations: the no-BN twin replaces every BN-like layer by nn.Identity and keeps every other weight; the other
twins (BN moved across the activation, bias before BN removed, dropout removed) change exactly that one thing.
The input model is never modified."""

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from bncheck.core.discover import find_batchnorms, is_batchnorm
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.state import Snapshot
from bncheck.examples import seed_cnn
from bncheck.training.ablate import (
    ablate,
    bn_after_activation,
    bn_before_activation,
    drop_bias_before_bn,
    drop_dropout,
)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class DuckBN(nn.Module):
    """BN-like without subclassing torch's: its own running_mean/running_var buffers."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.scale = nn.Parameter(torch.ones(c))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.running_mean.view(shape)) / (self.running_var.view(shape) + 1e-5).sqrt() * \
            self.scale.view(shape)


class MyBN(nn.BatchNorm2d):
    """A subclass of torch's BN."""


class Zoo(nn.Module):
    """Every kind of BN-like layer, nested and top level, between layers with weights."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.lazy = nn.LazyBatchNorm2d()
        self.frozen = FrozenBatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), MyBN(4), DuckBN(4))
        self.sync = nn.SyncBatchNorm(4)  # without a process group: plain BN
        self.head = nn.Linear(4, 5)
        self.bn1 = nn.BatchNorm1d(5, affine=False)
        self.bn3 = nn.BatchNorm3d(1)

    def forward(self, x):
        x = self.sync(self.block(self.frozen(self.lazy(self.stem(x)))))
        y = self.bn1(self.head(x.mean((2, 3))))
        return self.bn3(y[:, None, :, None, None]).flatten(1)


BN_NAMES = ["stem.1", "lazy", "frozen", "block.1", "block.2", "sync", "bn1", "bn3"]


def _zoo():
    model = Zoo()
    with torch.no_grad():  # non-trivial statistics everywhere, so that "identical" means something
        for m in find_batchnorms(model).values():
            if not isinstance(m, nn.LazyBatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
                m.running_var.uniform_(0.5, 2, generator=torch.Generator().manual_seed(2))
    return model


def test_ablate_replaces_every_bn_like_layer_by_identity():
    model = _zoo()
    assert list(find_batchnorms(model)) == BN_NAMES
    twin = ablate(model)
    assert find_batchnorms(twin) == {}
    for name in BN_NAMES:
        assert type(twin.get_submodule(name)) is nn.Identity, name
    assert type(twin.stem[0]) is nn.Conv2d and type(twin.head) is nn.Linear


def test_ablate_keeps_every_other_weight_identical_and_unshared():
    model = _zoo()
    model(_x(2, 3, 6, 6))  # initialize the lazy BN
    before = Snapshot.of(model)
    twin = ablate(model)
    mine, theirs = model.state_dict(), twin.state_dict()
    kept = {k for k in mine if not any(k.startswith(n + ".") for n in BN_NAMES)}
    assert set(theirs) == kept and len(kept) == 6  # 2 convs, 1 linear: weight and bias each
    for key in kept:
        assert torch.equal(theirs[key], mine[key]), key
        assert theirs[key].data_ptr() != mine[key].data_ptr(), key  # a copy, not shared storage
    with torch.no_grad():
        twin.head.weight.add_(1.0)
    assert before.differences(model) == []
    assert list(find_batchnorms(model)) == BN_NAMES


def test_ablated_seed_cnn_computes_the_model_without_its_bn_layers():
    model = seed_cnn()
    twin = ablate(model)
    x = model.example_input
    without_bn = nn.Sequential(*[m for m in model if not is_batchnorm(m)])
    for mode in (True, False):
        twin.train(mode)
        without_bn.train(mode)
        assert torch.equal(twin(x), without_bn(x))
    assert [type(m).__name__ for m in twin][3] == "Identity" and type(twin[10]) is nn.Identity


def test_ablate_uninitialized_lazy_bn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d())
    twin = ablate(model)
    assert type(twin[1]) is nn.Identity and twin(_x(2, 3, 5, 5)).shape == (2, 4, 3, 3)
    assert type(model[1]) is nn.LazyBatchNorm2d  # the model's own lazy layer is still there and uninitialized
    assert isinstance(model[1].weight, nn.parameter.UninitializedParameter)


def test_ablate_a_bn_layer_itself_and_a_model_without_bn():
    assert type(ablate(nn.BatchNorm2d(3))) is nn.Identity
    with pytest.raises(BNCheckUsageError, match="Sequential has no BatchNorm layer to ablate"):
        ablate(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def mlp(bias=True, dropout=0.0, order="before"):
    act = [nn.BatchNorm1d(8), nn.ReLU()] if order == "before" else [nn.ReLU(), nn.BatchNorm1d(8)]
    return nn.Sequential(nn.Linear(6, 8, bias=bias), *act, *([nn.Dropout(dropout)] if dropout else []),
                         nn.Linear(8, 3))


def _types(model):
    return [type(m).__name__ for m in model]


def test_bn_after_and_before_activation_swap_and_keep_the_weights():
    model = mlp()
    before = Snapshot.of(model)
    after = bn_after_activation(model)
    assert before.differences(model) == []
    model = copy.deepcopy(model)  # run a copy: a train-mode forward updates running statistics
    assert _types(after) == ["Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert _types(model) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    for key, value in model.state_dict().items():
        assert torch.equal(after.state_dict()[key], value)  # same names: twins load each other's state_dict
    x = _x(16, 6)
    manual = model[3](model[1](model[2](model[0](x))))  # Linear → ReLU → BN → Linear with the same layers
    assert torch.allclose(after(x), manual)
    back = bn_before_activation(after)
    assert _types(back) == _types(model) and torch.equal(back(x), model(x))


def test_swap_without_a_pair_is_a_usage_error():
    with pytest.raises(BNCheckUsageError, match="no BN→activation pair"):
        bn_after_activation(mlp(order="after"))
    with pytest.raises(BNCheckUsageError, match="no activation→BN pair"):
        bn_before_activation(mlp())


class Residual(nn.Module):
    """Not a Sequential: the producer of each BN input is found by a forward pass."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 4)  # feeds no BN: keeps its bias
        self.example_input = _x(4, 3, 5, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("make", [lambda: mlp(), Residual], ids=["sequential", "forward_pass"])
def test_drop_bias_before_bn_keeps_train_mode_output(make):
    model = make()
    before = Snapshot.of(model)
    twin = drop_bias_before_bn(model)
    assert before.differences(model) == []
    x = model.example_input if hasattr(model, "example_input") else _x(16, 6)
    producer = twin.conv if isinstance(twin, Residual) else twin[0]
    assert producer.bias is None
    last = twin.fc if isinstance(twin, Residual) else twin[3]
    assert last.bias is not None
    # BN subtracts the batch mean, bias included: in train mode the output is the same
    assert torch.allclose(twin.train()(x), copy.deepcopy(model).train()(x), atol=1e-5)
    assert not torch.allclose(twin.eval()(x), model.eval()(x), atol=1e-5)  # eval: the bias mattered


def test_drop_bias_before_bn_where_no_bias_feeds_a_bn():
    with pytest.raises(BNCheckUsageError, match="no conv/linear bias feeding a BN directly"):
        drop_bias_before_bn(seed_cnn())  # its BNs follow a max-pool and a ReLU
    with pytest.raises(BNCheckUsageError, match="no conv/linear bias feeding a BN directly"):
        drop_bias_before_bn(mlp(bias=False))


def test_drop_dropout():
    model = mlp(dropout=0.5)
    twin = drop_dropout(model)
    assert _types(twin) == ["Linear", "BatchNorm1d", "ReLU", "Identity", "Linear"]
    x = _x(16, 6)
    assert torch.equal(twin.eval()(x), model.eval()(x))
    twin.train()
    assert torch.equal(twin(x), twin(x))  # no random masks left
    assert type(model[3]) is nn.Dropout
    with pytest.raises(BNCheckUsageError, match="no dropout layer"):
        drop_dropout(mlp())

