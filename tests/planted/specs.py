"""Tiny models the plugin and CLI tests name by spec (as `bnmodels` and `cli_models`).

test_plugin.py writes this file's text into each pytester directory as `bnmodels.py`, so that the inner pytest
run (in-process or in a subprocess) loads them as `--bncheck-model=bnmodels:<name>`. Everything here is small
(a few channels, 8x8 inputs) so that a whole plugin run takes about a second.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

SEEN: list = []  # (shape, first value) of every input Recorder.forward saw: makes the example input observable


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Net(nn.Module):
    """Two BN layers of two kinds, nested (features.1) and top level (bn1); bias-free producers (no lint)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 6, bias=False)
        self.bn1 = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn1(self.fc(self.features(x).mean((2, 3))))


net = Net()
net.example_input = _x(4, 3, 8, 8)


def _plain():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())


plain = _plain()  # no example_input: needs --bncheck-input-shape


def factory():
    """A zero-argument factory returning (module, example_input): 2 input channels, unlike `plain`."""
    return nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3)), _x(4, 2, 8, 8)


def module_factory():
    """A zero-argument factory returning only a module (no input: needs --bncheck-input-shape)."""
    return _plain()


class Holder:
    class Inner:
        model = _plain()  # reached as bnmodels:Holder.Inner.model


class Recorder(nn.Module):
    """Records the shape and first value of every input, to observe --bncheck-input-shape/-batch-size/-seed."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        SEEN.append((tuple(x.shape), float(x.flatten()[0])))
        return self.bn(self.conv(x))


recorder = Recorder()


class FlippedMomentumBN(nn.BatchNorm2d):
    """Broken: the Keras/TF momentum convention, running = m·running + (1 − m)·batch."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            1.0 - self.momentum, self.eps)


flipped = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), FlippedMomentumBN(4))
flipped.example_input = _x(4, 3, 8, 8)


class NoBFloat16BN(nn.BatchNorm2d):
    """Broken in bfloat16 only: it normalizes with the running statistics in train mode (float16 is fine)."""

    def forward(self, x):
        if x.dtype == torch.bfloat16:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


no_bf16 = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), NoBFloat16BN(4))
no_bf16.example_input = _x(4, 3, 8, 8)


class PromotingBN(nn.BatchNorm2d):
    """Right values, but float32 output for half input (computes in float32 and never casts back)."""

    def forward(self, x):
        return super().forward(x.float())


promotes = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), PromotingBN(4))
promotes.example_input = _x(4, 3, 8, 8)

class NoisyBN(nn.BatchNorm2d):
    """Correct, but emits an unrelated UserWarning on every call."""

    def forward(self, x):
        warnings.warn("some library chatter", UserWarning, stacklevel=2)
        return super().forward(x)


noisy = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), NoisyBN(4))
noisy.example_input = _x(4, 3, 8, 8)

# Lints: a conv with a bias feeding BN, Keras's momentum, frozen γ/β in train mode.
biased = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4))
biased.example_input = _x(4, 3, 8, 8)

keras = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=0.99))
keras.example_input = _x(4, 3, 8, 8)

frozen_affine = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
frozen_affine[1].weight.requires_grad_(False)
frozen_affine[1].bias.requires_grad_(False)
frozen_affine.example_input = _x(4, 3, 8, 8)

# Eval mode with one frozen parameter: the plugin must not switch it to train mode or unfreeze it.
eval_frozen = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
eval_frozen[0].weight.requires_grad_(False)
eval_frozen.example_input = _x(4, 3, 8, 8)

nobn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
nobn.example_input = _x(4, 3, 8, 8)


class TextbookBN(nn.Module):
    """Statistics as plain tensor attributes, as a popular textbook writes them: state_dict() does not save them."""

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.running_mean, self.running_var = torch.zeros(c), torch.ones(c)
        self.momentum, self.eps = 0.1, 1e-5

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


textbook = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), TextbookBN(4))
textbook.example_input = _x(4, 3, 8, 8)
nobn.example_input = _x(4, 3, 8, 8)

# Bad inputs.
not_a_model = 3


def raising_factory():
    raise RuntimeError("cannot build the model\nsecond line of the message")


def returns_int():
    return 7


class Detector(nn.Module):
    """Like torchvision's detectors: train mode wants targets, eval mode returns one dict per image; the bias
    feeding its BN is redundant (the lint must find it from the eval-mode capture)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, images, targets=None):
        if self.training and targets is None:
            raise AssertionError("targets should not be none when in training mode")
        features = self.body(images)
        return [{"scores": f.mean((1, 2)), "labels": f.argmax(0).flatten()} for f in features]


detector = Detector()
detector.example_input = _x(3, 3, 8, 8)


# False alarms that must not happen (issue 11): a float64 model, a model whose activations overflow before a BN,
# a Lazy model, a model of two inputs given through the factory form.
double = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                       nn.LazyLinear(5), nn.BatchNorm1d(5)).double()
double.example_input = _x(4, 3, 8, 8).double()


class Overflow(nn.Module):
    """inf before its second BN (exp of large activations): nothing after it can be judged."""

    def __init__(self):
        super().__init__()
        self.bn0, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.bn1(torch.exp(1e3 * self.conv(self.bn0(x)))))


overflow = Overflow()
overflow.example_input = _x(4, 3, 8, 8)

lazy = nn.Sequential(nn.LazyConv2d(4, 3, bias=False), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
lazy.example_input = _x(4, 3, 8, 8)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)), nn.BatchNorm2d(3)

    def forward(self, x, y):
        return self.a(x).mean((2, 3)) + self.b(y).mean((1, 2, 3))[:, None]


two_inputs = TwoInputs()


def two_inputs_factory():
    return TwoInputs(), (_x(4, 3, 8, 8), _x(4, 3, 8, 8, seed=1))


# Specs with arguments, seeded construction, a forward that raises.
class Wide(nn.Module):
    """Needs its width: `bnmodels:Wide(width=4)`; random weights, so its construction must be seeded."""

    def __init__(self, width, eps=1e-5):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, width, 3, bias=False), nn.BatchNorm2d(width, eps=eps)

    def forward(self, x):
        return self.bn(self.conv(x))


def wide_factory(width=4):
    """A factory with a default: `bnmodels:wide_factory` or `bnmodels:wide_factory(width=2)`."""
    return Wide(width), _x(4, 3, 8, 8)


class Raiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        raise RuntimeError("boom")


raiser = Raiser()
raiser.example_input = _x(4, 3, 8, 8)
