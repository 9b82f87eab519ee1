"""Hypothesis strategies for property-testing BatchNorm layers: configurations, inputs, and (config, input) cases.

Property-test your own BN against bncheck's float64 oracle::

    from hypothesis import given
    from bncheck.core import oracle
    from bncheck.core.compare import check_close
    from bncheck.strategies import bn_case
    from bncheck.core.tolerances import tolerance_for

    @given(bn_case())
    def test_my_bn_matches_the_oracle(case):
        layer = MyBatchNorm(**case.config.kwargs()).to(case.x.device, case.layer_dtype)
        layer.load_state_dict(case.make_layer().state_dict())  # the case's non-trivial γ, β, running stats
        y = layer.train()(case.x)
        expected = oracle.train_forward(case.x, case.config.eps, case.weight, case.bias)
        check_close(y, expected, where="MyBatchNorm", quantity="train output",
                    tol=tolerance_for("output", case.x.dtype), cause="see the contract", axes=("sample", "channel"))

A complete runnable example (train output, running statistics and eval output), and the property tests bncheck runs
on torch's BN and on the oracle: docs/PROPERTIES.md.

Inputs are built from a drawn seed and a few drawn per-channel numbers (scale, offset, distribution), not
element by element, so examples stay fast (at most ~2k elements by default) and shrink to readable cases.
Values are finite, every channel varies (n ≥ 2 values, not all equal), and the per-channel offset is bounded
relative to the per-channel scale per dtype, so that a correct BN meets bncheck's tolerance table
(bncheck.core.tolerances) in every dtype: a float32 channel at offset 10⁴·std loses four digits to cancellation.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from bncheck.core.extras import require
from bncheck.core.tolerances import runs_batch_norm

st = require("hypothesis.strategies", extra="properties", feature="bncheck.strategies")

__all__ = ["BNCase", "BNConfig", "bn_case", "bn_configs", "bn_inputs", "bn_module_class", "supported_dtypes"]

# |offset| / scale per channel: float32 keeps ~7 digits, so 30·scale offsets cost < 2 of them (rtol 1e-4 holds);
# float16/bfloat16 inputs themselves round to 3 / 2 significant digits, so the data must still vary after
# rounding.
MAX_OFFSET_RATIO = {torch.float64: 1e3, torch.float32: 30.0, torch.float16: 8.0, torch.bfloat16: 4.0}
DISTRIBUTIONS = ("normal", "uniform", "laplace", "two_point", "integers")
_MODULES = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _strategy(value) -> st.SearchStrategy:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def bn_module_class(rank: int) -> type[nn.Module]:
    """torch's BN class for an input of `rank` dims: BatchNorm1d for 2-D/3-D, BatchNorm2d for 4-D, 3d for 5-D."""
    if rank not in _MODULES:
        raise ValueError(f"BatchNorm takes 2-D to 5-D inputs, got {rank}-D")
    return _MODULES[rank]


def supported_dtypes(device="cpu") -> tuple[torch.dtype, ...]:
    """float32 and float64, plus float16/bfloat16 where torch's batch_norm (forward and backward) runs on `device`."""
    device = str(torch.device(device))
    return (torch.float32, torch.float64) + tuple(
        d for d in (torch.float16, torch.bfloat16) if runs_batch_norm(device, d))


@dataclass(frozen=True)
class BNConfig:
    """The constructor arguments of a BN layer."""

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True

    def kwargs(self) -> dict:
        """Keyword arguments for torch's BatchNorm{1,2,3}d (and any BN with the same signature)."""
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}

    def make_layer(self, rank: int = 4, *, device="cpu", dtype=torch.float32) -> nn.Module:
        """A fresh torch BatchNorm{1,2,3}d for `rank`-D inputs, with torch's default state."""
        return bn_module_class(rank)(**self.kwargs(), device=device, dtype=dtype)


_EPS = st.one_of(st.sampled_from([1e-5, 1e-3]), st.integers(-8, -1).map(lambda e: 10.0 ** e))
_MOMENTUM = st.one_of(st.none(), st.sampled_from([0.1, 0.01, 0.5, 1.0]), st.floats(0.0, 1.0))
_CHANNELS = st.integers(1, 6)
_FLAG = st.booleans()


def bn_configs(num_features=_CHANNELS, eps=_EPS, momentum=_MOMENTUM, affine=_FLAG,
               track_running_stats=_FLAG) -> st.SearchStrategy[BNConfig]:
    """BNConfig draws. Every argument is a value or a strategy, e.g. ``bn_configs(momentum=None)``.

    Defaults: 1-6 channels; eps 1e-8..1e-1 (torch's 1e-5 and Keras' 1e-3 often); momentum None (cumulative
    average), 0, 1, common values and any float in [0, 1]; affine and track_running_stats either way.
    """
    return st.builds(BNConfig, num_features=_strategy(num_features), eps=_strategy(eps),
                     momentum=_strategy(momentum), affine=_strategy(affine),
                     track_running_stats=_strategy(track_running_stats))


def _base(kind: str, shape, gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "uniform":
        return torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    if kind == "laplace":  # heavier tails: a few values far from the rest
        u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12) - 0.5
        return -u.sign() * torch.log1p(-2 * u.abs())
    if kind == "two_point":
        return torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1
    return torch.randint(-3, 4, shape, generator=gen).to(torch.float64)


def _make_channels_vary(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Give every channel that came out constant (in its dtype) two distinct values, offset ± scale."""
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    constant = (per_channel == per_channel[:, :1]).all(dim=1)
    if per_channel.shape[1] < 2 or not bool(constant.any()):
        return x
    per_channel = per_channel.clone()
    for c in constant.nonzero().flatten().tolist():
        per_channel[c, 0], per_channel[c, 1] = float(offset[c] - scale[c]), float(offset[c] + scale[c])
    return per_channel.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1).contiguous()


@st.composite
def bn_inputs(draw, num_features: int, *, dtypes=None, ranks=(2, 3, 4, 5), device="cpu", min_batch: int = 2,
              max_batch: int = 8, max_spatial: int = 6, max_elements: int = 2048, spatial=None,
              scales=(1e-2, 1e2), max_offset_ratio=None, memory_formats: bool = True) -> torch.Tensor:
    """Inputs (N, C, *) for a BN of `num_features` channels, on `device`.

    - rank from `ranks` (2-D to 5-D), batch N in [min_batch, max_batch], spatial sizes 1..max_spatial (or the
      fixed `spatial` tuple), at most `max_elements` elements in all;
    - per channel: a base distribution (normal, uniform, laplace, two-point, small integers), a scale drawn
      log-uniformly from `scales`, an offset up to `max_offset_ratio`·scale (default per dtype:
      MAX_OFFSET_RATIO); values are finite and every channel varies;
    - dtype from `dtypes` (default: float32, float64, and float16/bfloat16 where the device runs them, see
      supported_dtypes); for 4-D/5-D inputs contiguous or channels_last (when `memory_formats`).
    """
    dtypes = tuple(dtypes) if dtypes is not None else supported_dtypes(device)
    dtype = draw(st.sampled_from(dtypes))
    c = num_features
    if spatial is not None:
        spatial = tuple(spatial)
        rank = 2 + len(spatial)
        per_sample = c * math.prod(spatial)
    else:
        rank = draw(st.sampled_from(tuple(ranks)))
        per_sample = c
    batch = draw(st.integers(min_batch, max(min_batch, min(max_batch, max_elements // per_sample))))
    if spatial is None:
        budget, sizes = max_elements // (c * batch), []
        for _ in range(rank - 2):
            size = draw(st.integers(1, max(1, min(max_spatial, budget))))
            budget //= size
            sizes.append(size)
        spatial = tuple(sizes)
    shape = (batch, c, *spatial)
    seed = draw(st.integers(0, 2**32 - 1))
    kinds = draw(st.lists(st.sampled_from(DISTRIBUTIONS), min_size=c, max_size=c))
    lo, hi = math.log10(scales[0]), math.log10(scales[1])
    scale = 10 ** torch.tensor(draw(st.lists(st.floats(lo, hi), min_size=c, max_size=c)), dtype=torch.float64)
    ratio = MAX_OFFSET_RATIO.get(dtype, 30.0) if max_offset_ratio is None else max_offset_ratio
    offset = torch.tensor(draw(st.lists(st.floats(-ratio, ratio), min_size=c, max_size=c)),
                          dtype=torch.float64) * scale
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(shape, dtype=torch.float64)
    for ch, kind in enumerate(kinds):
        x[:, ch] = _base(kind, (batch, *spatial), gen) * scale[ch] + offset[ch]
    x = _make_channels_vary(x.to(dtype), scale, offset).to(device)
    if memory_formats and rank in _CHANNELS_LAST and draw(st.booleans()):
        x = x.contiguous(memory_format=_CHANNELS_LAST[rank])
    return x


@dataclass(frozen=True)
class BNCase:
    """One drawn BN layer configuration with a matching input and non-trivial state (all float64 on the CPU).

    `weight`/`bias` are None without affine, `running_mean`/`running_var` None without track_running_stats.
    The running statistics lie near the input's own (a few std off), so eval outputs stay O(1).
    """

    config: BNConfig
    x: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None

    @property
    def rank(self) -> int:
        return self.x.dim()

    @property
    def layer_dtype(self) -> torch.dtype:
        """float64 for float64 input, else float32 (float16/bfloat16 inputs keep float32 γ, β and statistics)."""
        return torch.float64 if self.x.dtype == torch.float64 else torch.float32

    def make_layer(self) -> nn.Module:
        """A torch BatchNorm{1,2,3}d for this input (on its device, in layer_dtype) holding the case's state."""
        layer = self.config.make_layer(self.rank, device=self.x.device, dtype=self.layer_dtype)
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(self, key)
                if value is not None:
                    getattr(layer, key).copy_(value)
        return layer


@st.composite
def bn_case(draw, configs=None, **input_kwargs) -> BNCase:
    """A BNCase: a config from `configs` (default bn_configs()), an input from bn_inputs(**input_kwargs) with its
    channel count, γ in ±[0.25, 2], β in [-3, 3], and running statistics near the input's: mean ± [0.5, 2]·std,
    variance·2^±[0.5, 2].

    ``@given(bn_case())`` draws everything; ``bn_case(bn_configs(track_running_stats=True), dtypes=[torch.float64],
    ranks=(4,))`` narrows it.
    """
    config = draw(bn_configs() if configs is None else configs)
    x = draw(bn_inputs(config.num_features, **input_kwargs))
    c = config.num_features

    def vector(lo, hi, signed=False):
        v = torch.tensor(draw(st.lists(st.floats(lo, hi), min_size=c, max_size=c)), dtype=torch.float64)
        if signed:
            v = v * torch.tensor(draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=c, max_size=c)),
                                 dtype=torch.float64)
        return v

    weight = bias = running_mean = running_var = None
    if config.affine:
        weight = vector(0.25, 2.0, signed=True)
        bias = vector(-3.0, 3.0)
    if config.track_running_stats:
        # Never equal to the batch's own statistics, so that a layer mixing the two up shows it.
        x64 = x.detach().to("cpu", torch.float64)
        dims = [0, *range(2, x64.dim())]
        mean, std = x64.mean(dims), x64.std(dims, correction=0).clamp_min(1e-12)
        running_mean = mean + vector(0.5, 2.0, signed=True) * std
        running_var = std**2 * 2.0 ** vector(0.5, 2.0, signed=True)
    return BNCase(config, x, weight, bias, running_mean, running_var)
