"""The networks of the two seed tutorials, with every variant as a named setting."""

from torch import nn

from bncheck.examples import seed_cnn
from bncheck.training.ablate import ablate


def cnn(setting: str) -> nn.Module:
    """The deeplizard Fashion-MNIST CNN (bncheck.examples.seed_cnn, 1x28x28 input): "BN" as published, "no BN" its
    twin with both BN layers replaced by nn.Identity (bncheck.ablate)."""
    if setting not in CNN_SETTINGS:
        raise ValueError(f"cnn setting {setting!r}: expected one of {', '.join(CNN_SETTINGS)}")
    net = seed_cnn()
    return net if setting == "BN" else ablate(net)


def digits_cnn(setting: str = "BN") -> nn.Module:
    """The same design for 8x8 inputs (3x3 convolutions with padding): the stability experiment's model."""
    bn2, bn1 = (nn.BatchNorm2d(6), nn.BatchNorm1d(120)) if setting == "BN" else (nn.Identity(), nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), bn2,
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(48, 120), nn.ReLU(), bn1, nn.Linear(120, 60), nn.ReLU(), nn.Linear(60, 10))


CNN_SETTINGS = ("BN", "no BN")


def mlp_setting(bn: str | None, bias: bool, dropout: float) -> str:
    where = "no BN" if bn is None else f"BN {bn} ReLU"
    return f"{where}, {'bias' if bias else 'no bias'}, {'dropout 0.2' if dropout else 'no dropout'}"


# The second tutorial's questions: BN before or after the activation, the bias before BN, dropout with BN; and the
# plain MLP without BN as the baseline (its bias always on: without BN a bias is no redundant parameter).
MLP_SETTINGS = {mlp_setting(bn, bias, dropout): (bn, bias, dropout)
                for bn, bias, dropout in [(None, True, 0.0), (None, True, 0.2)] + [
                    (bn, bias, dropout) for bn in ("before", "after") for bias in (True, False)
                    for dropout in (0.0, 0.2)]}


def mlp(setting: str, inputs: int, hidden=(128, 64), classes: int = 10) -> nn.Module:
    """A ReLU MLP on flattened images: per hidden layer Linear → [BN →] ReLU [→ BN] [→ Dropout]."""
    if setting not in MLP_SETTINGS:
        raise ValueError(f"mlp setting {setting!r}: expected one of {', '.join(MLP_SETTINGS)}")
    bn, bias, dropout = MLP_SETTINGS[setting]
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=bias))
        if bn == "before":
            layers += [nn.BatchNorm1d(h), nn.ReLU()]
        elif bn == "after":
            layers += [nn.ReLU(), nn.BatchNorm1d(h)]
        else:
            layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)
