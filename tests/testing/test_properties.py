"""Properties every BatchNorm must have, checked with hypothesis over torch's BN and over bncheck's oracle.

Each property is a function of an implementation (`make(case) -> module`) that returns a @given test, so the
same property runs on torch's BatchNorm, on the oracle (OracleBN below) and on the mutants defined here: every
property is shown able to fail by a test in which hypothesis finds a counterexample for a planted defect.

Tolerances: bncheck's table (bncheck.core.tolerances) for the output dtype, plus rounding slack from the drawn data
(`_slack`): a channel whose values reach κ standard deviations from zero (κ = max|x|/std) loses about κ·u of
relative precision in its z-scores to cancellation (u: the unit roundoff of the input dtype), and a little more
for large |z| through the variance. The slack is computed from each example, never fixed loosely.
"""

import dataclasses

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from bncheck.core import oracle
from bncheck.core.compare import check_close
from bncheck.core.tolerances import Tolerance, tolerance
from bncheck.strategies import MAX_OFFSET_RATIO, BNCase, bn_case, bn_configs, bn_inputs

AXES = ("sample", "channel")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is several times faster than waking a pool, and the same under xdist."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class OracleBN(nn.Module):
    """bncheck.core.oracle behind torch's BN interface (float64 outputs), holding a case's state.

    One method per step of the contract, so that a mutant overrides exactly one.
    """

    def __init__(self, case: BNCase):
        super().__init__()
        self.eps, self.momentum = case.config.eps, case.config.momentum
        self.weight, self.bias = case.weight, case.bias
        self.stats = oracle.RunningStats(case.running_mean, case.running_var, 0) \
            if case.config.track_running_stats else None

    running_mean = property(lambda self: None if self.stats is None else self.stats.mean)
    running_var = property(lambda self: None if self.stats is None else self.stats.var)
    num_batches_tracked = property(lambda self: None if self.stats is None else
                                   torch.tensor(self.stats.num_batches_tracked))

    def forward(self, x):
        if self.stats is not None and not self.training:
            return self.normalize_running(x)
        y = self.normalize_batch(x)
        if self.stats is not None:
            self.stats = self.update(self.stats, x)
        return y

    def normalize_batch(self, x):
        return oracle.train_forward(x, self.eps, self.weight, self.bias)

    def update(self, stats, x):
        return oracle.update_running(stats, x, self.momentum)

    def normalize_running(self, x):
        return oracle.eval_forward(x, self.stats.mean, self.stats.var, self.eps, self.weight, self.bias)


IMPLEMENTATIONS = {"torch": BNCase.make_layer, "oracle": OracleBN}


# ---- mutants: one planted defect each ------------------------------------------------------------------------

class Uncentered(OracleBN):
    """Forgets to subtract the batch mean: x / sqrt(var + eps)."""

    def normalize_batch(self, x):
        stats = oracle.batch_stats(x)
        return oracle.normalize(x, torch.zeros_like(stats.mean), stats.var, self.eps, self.weight, self.bias)


class EpsOutsideSqrt(OracleBN):
    """(x − mean) / (sqrt(var) + eps): right for large variances, wrong where var ≈ eps."""

    def normalize_batch(self, x):
        stats = oracle.batch_stats(x)
        return oracle.normalize(x, stats.mean, (stats.var.sqrt() + self.eps) ** 2, 0.0, self.weight, self.bias)


class GhostBatches(OracleBN):
    """Normalizes each pair of samples with that pair's statistics (ghost batches of 2), not the whole batch."""

    def normalize_batch(self, x):
        return torch.cat([oracle.train_forward(chunk, self.eps, self.weight, self.bias) for chunk in x.split(2)])


class RunningMeanOfLastSample(OracleBN):
    """Updates running_mean with the last sample's mean (a leaked loop variable); running_var stays right."""

    def update(self, stats, x):
        new = super().update(stats, x)
        m = oracle.momentum_factor(self.momentum, new.num_batches_tracked)
        return dataclasses.replace(new, mean=(1 - m) * stats.mean + m * oracle.batch_stats(x[-1:]).mean)


class BatchStatsInEval(OracleBN):
    """Eval mode normalizes with the batch's statistics, as if .eval() had been forgotten."""

    def normalize_running(self, x):
        return self.normalize_batch(x)


class CumulativeOffByOne(OracleBN):
    """momentum=None weighs the new batch 1/(num_batches_tracked + 1): the initial running stats never leave."""

    def update(self, stats, x):
        batch, nbt = oracle.batch_stats(x), stats.num_batches_tracked + 1
        m = self.momentum if self.momentum is not None else 1.0 / (nbt + 1)
        return oracle.RunningStats((1 - m) * stats.mean + m * batch.mean, (1 - m) * stats.var + m * batch.unbiased_var,
                                   nbt)


def detached_stats_backward(x, dy, eps, weight=None) -> oracle.Gradients:
    """Backward that treats the batch mean and variance as constants: dx = dy·γ/sqrt(var + eps)."""
    stats = oracle.batch_stats(x)
    return oracle.eval_backward(x, dy, stats.mean, stats.var, eps, weight)


# ---- helpers -------------------------------------------------------------------------------------------------

def _conditioning(x: torch.Tensor) -> float:
    """max over channels of κ·(1 + max|z|), κ = max|x|/std: how many ulps of x one ulp of a z-score may cost."""
    x64 = x.detach().to("cpu", torch.float64)
    dims = oracle.reduce_dims(x64)
    mean, std = x64.mean(dims), x64.std(dims, correction=0).clamp_min(1e-300)
    kappa = x64.abs().amax(dims) / std
    z = (x64 - oracle.per_channel(mean, x64)).abs().amax(dims) / std
    return float((kappa * (1 + z)).max())


def _slack(x_dtype: torch.dtype, weight, *inputs) -> Tolerance:
    """The table's tolerance for `x_dtype` plus 4·u·max|γ|·κ(1 + |z|) of rounding slack for `inputs`."""
    base = tolerance(x_dtype)
    gamma = 1.0 if weight is None else float(weight.abs().max())
    u = torch.finfo(x_dtype).eps
    return Tolerance(base.rtol, base.atol + 4 * u * gamma * max(_conditioning(t) for t in inputs))


def _stats_tol(x_dtype: torch.dtype, stats_dtype: torch.dtype, *inputs) -> Tolerance:
    """Running statistics: the table's tolerance for their dtype plus 4·u·κ(1 + |z|) relative (the variance of
    an offset channel is a difference of nearly equal numbers)."""
    base = tolerance(stats_dtype)
    return Tolerance(base.rtol + 4 * torch.finfo(x_dtype).eps * max(_conditioning(t) for t in inputs), base.atol)


def _train_step(layer, x):
    layer.train()
    with torch.no_grad():
        return layer(x)


def _assert_same_running_stats(got_layer, expected_layer, *, where, tol):
    for key in ("running_mean", "running_var"):
        got, expected = getattr(got_layer, key), getattr(expected_layer, key)
        if expected is not None:
            check_close(got, expected, where=where, quantity=key, tol=tol, cause="see the property")
    if expected_layer.num_batches_tracked is not None:
        check_close(got_layer.num_batches_tracked, expected_layer.num_batches_tracked, where=where,
                    quantity="num_batches_tracked", tol=Tolerance(0, 0), cause="see the property")


def _label(make) -> str:
    return "torch BN" if make is BNCase.make_layer else make.__name__


def _log_uniform(lo: float, hi: float):
    return st.floats(lo, hi).map(lambda e: 10.0**e)


# ---- (0) torch's BN agrees with the oracle on every drawn case (the strategies' usage example) -----------------

def matches_oracle(make):
    @given(case=bn_case())
    def prop(case):
        layer, x = make(case), case.x
        cfg = case.config
        y = _train_step(layer, x)
        where = f"{type(layer).__name__} {cfg} on {tuple(x.shape)} {x.dtype}"
        expected = oracle.train_forward(x, cfg.eps, case.weight, case.bias)
        check_close(y, expected, where=where, quantity="train output", tol=_slack(x.dtype, case.weight, x),
                    cause="see the contract", axes=AXES)
        if cfg.track_running_stats:
            state = oracle.update_running(oracle.RunningStats(case.running_mean, case.running_var, 0), x, cfg.momentum)
            for key, value in (("running_mean", state.mean), ("running_var", state.var)):
                check_close(getattr(layer, key), value, where=where, quantity=key, cause="see the contract",
                            tol=_stats_tol(x.dtype, layer.running_mean.dtype, x))
            layer.eval()
            with torch.no_grad():
                y = layer(x)
            check_close(y, oracle.eval_forward(x, state.mean, state.var, cfg.eps, case.weight, case.bias),
                        where=where, quantity="eval output", tol=_slack(x.dtype, case.weight, x),
                        cause="see the contract", axes=AXES)

    return prop


def test_torch_bn_matches_oracle_on_drawn_cases():
    matches_oracle(IMPLEMENTATIONS["torch"])()


# ---- (a) train output invariant to a per-channel positive scale and shift -------------------------------------

def scale_shift_invariance(make):
    """BN_eps(a·x + b) = BN_{eps/a²}(x), per channel c with a_c > 0.

    The variance scales by a², so with the same eps the identity is only approximate: the z-scores differ by a
    factor sqrt((v + eps/a²)/(v + eps)), up to ~|1 − 1/a|·|z| where var ≈ eps. Instead of drawing only scales
    that keep var ≫ eps, eps is moved with the scale: channel c of BN_eps(a·x + b) is compared with a one-channel
    BN of channel c of x with eps/a_c², which is exact in real arithmetic. The shift is drawn relative to the new
    per-channel std (as bn_inputs draws offsets), so a·x + b stays representable in the input dtype.
    """

    @given(case=bn_case(), data=st.data())
    def prop(case, data):
        x, cfg = case.x, case.config
        c = cfg.num_features
        x64 = x.detach().to("cpu", torch.float64)
        std = x64.std(oracle.reduce_dims(x64), correction=0)
        a = torch.tensor(data.draw(st.lists(_log_uniform(-1.0, 1.0), min_size=c, max_size=c), label="scale"))
        ratio = min(8.0, MAX_OFFSET_RATIO.get(x.dtype, 30.0))
        r = torch.tensor(data.draw(st.lists(st.floats(-ratio, ratio), min_size=c, max_size=c), label="shift/std"))
        moved = (oracle.per_channel(a, x64) * x64 + oracle.per_channel(r * a * std, x64)).to(x.dtype).to(x.device)
        moved = moved.contiguous(memory_format=_memory_format(x))
        y = _train_step(make(dataclasses.replace(case, x=moved)), moved)
        tol = _slack(x.dtype, case.weight, x, moved)
        for ch in range(c):
            one = dataclasses.replace(
                case, config=dataclasses.replace(cfg, num_features=1, eps=cfg.eps / float(a[ch]) ** 2),
                x=x[:, ch:ch + 1], **{k: None if getattr(case, k) is None else getattr(case, k)[ch:ch + 1]
                                      for k in ("weight", "bias", "running_mean", "running_var")})
            expected = _train_step(make(one), one.x)
            check_close(y[:, ch:ch + 1], expected, where=f"{_label(make)} {cfg}, channel {ch} scaled by "
                        f"{float(a[ch]):.4g}, shifted by {float(r[ch] * a[ch] * std[ch]):.4g}",
                        quantity="train output of the scaled and shifted input", tol=tol,
                        cause="the output is not invariant to a per-channel affine change of the input", axes=AXES)

    return prop


def _memory_format(x: torch.Tensor):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_train_output_invariant_to_per_channel_scale_and_shift(impl):
    scale_shift_invariance(IMPLEMENTATIONS[impl])()


# ---- (b) permuting the batch permutes the output and leaves the running statistics unchanged -------------------

def batch_permutation(make):
    @given(case=bn_case(), data=st.data())
    def prop(case, data):
        x = case.x
        perm = torch.tensor(data.draw(st.permutations(range(x.shape[0])), label="permutation"))
        layer, permuted = make(case), make(case)
        y, y_perm = _train_step(layer, x), _train_step(permuted, x[perm])
        where = f"{case.config} on {tuple(x.shape)} {x.dtype}, batch permuted by {perm.tolist()}"
        check_close(y_perm, y[perm], where=where, quantity="train output of the permuted batch", axes=AXES,
                    tol=_slack(x.dtype, case.weight, x), cause="samples are treated differently by position")
        if case.config.track_running_stats:
            _assert_same_running_stats(permuted, layer, where=where,
                                       tol=_stats_tol(x.dtype, layer.running_mean.dtype, x))

    return prop


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_batch_permutation_permutes_output_and_keeps_running_stats(impl):
    batch_permutation(IMPLEMENTATIONS[impl])()


# ---- (c) eval mode is a per-channel affine map, independent of the other samples --------------------------------

def eval_is_per_channel_affine(make):
    """With running statistics, eval output y = A_c·x + B_c per channel. Checked without knowing A and B:
    (1) the batch split in two gives the same outputs (no sample depends on another), and (2) for per-channel
    weights t_c in [0, 1], y(t·x + (1 − t)·x[perm]) = t·y(x) + (1 − t)·y(x[perm]); a weight per channel catches
    channels that mix. float32/float64: the mix is rounded to the input dtype, which float16 would dominate."""

    @given(case=bn_case(bn_configs(track_running_stats=True), dtypes=[torch.float32, torch.float64]), data=st.data())
    def prop(case, data):
        x, c = case.x, case.config.num_features
        layer = make(case).eval()
        k = data.draw(st.integers(1, x.shape[0] - 1), label="split")
        perm = torch.tensor(data.draw(st.permutations(range(x.shape[0])), label="permutation"))
        t = torch.tensor(data.draw(st.lists(st.floats(0.0, 1.0), min_size=c, max_size=c), label="t"),
                         dtype=x.dtype)
        t = oracle.per_channel(t, x)
        mixed = t * x + (1 - t) * x[perm]
        with torch.no_grad():
            y, y_mixed = layer(x), layer(mixed)
            parts = torch.cat([layer(x[:k]), layer(x[k:])])
        where = f"{case.config} eval on {tuple(x.shape)} {x.dtype}"
        tol = _slack(x.dtype, case.weight, x, mixed)
        check_close(parts, y, where=f"{where}, batch split at {k}", quantity="eval output of the split batch",
                    tol=tol, cause="eval output depends on the other samples of the batch", axes=AXES)
        check_close(y_mixed, t * y + (1 - t) * y[perm], where=where, axes=AXES, tol=tol,
                    quantity="eval output of a per-channel mix of samples",
                    cause="eval output is not a per-channel affine function of the input")

    return prop


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_eval_is_a_per_channel_affine_map_of_each_sample(impl):
    eval_is_per_channel_affine(IMPLEMENTATIONS[impl])()


# ---- (d) momentum=None: the running mean is the mean of the batch means ------------------------------------------

def cumulative_average(make):
    """After k train batches from num_batches_tracked=0 with momentum=None: running_mean = mean of the k batch
    means, running_var = mean of the k unbiased batch variances, num_batches_tracked = k; whatever the initial
    running statistics (the case's are non-trivial) and the batch sizes."""

    @given(case=bn_case(bn_configs(momentum=None, track_running_stats=True)), data=st.data())
    def prop(case, data):
        x = case.x
        k = data.draw(st.integers(1, 4), label="k")
        batches = [x] + [data.draw(bn_inputs(x.shape[1], spatial=x.shape[2:], dtypes=[x.dtype], device=x.device),
                                   label=f"batch {i}") for i in range(1, k)]
        layer = make(case)
        for batch in batches:
            _train_step(layer, batch)
        means, variances = [], []
        for batch in batches:
            b64 = batch.to("cpu", torch.float64)
            means.append(b64.mean(oracle.reduce_dims(b64)))
            variances.append(b64.var(oracle.reduce_dims(b64), correction=1))
        where = f"{case.config} after {k} batches {[tuple(b.shape) for b in batches]} {x.dtype}"
        tol = _stats_tol(x.dtype, layer.running_mean.dtype, *batches)
        check_close(layer.running_mean, torch.stack(means).mean(0), where=where, tol=tol,
                    quantity="running_mean (expected: the mean of the batch means)",
                    cause="momentum=None is not the cumulative average 1/num_batches_tracked")
        check_close(layer.running_var, torch.stack(variances).mean(0), where=where, tol=tol,
                    quantity="running_var (expected: the mean of the unbiased batch variances)",
                    cause="momentum=None is not the cumulative average 1/num_batches_tracked")
        check_close(layer.num_batches_tracked, torch.tensor(k), where=where, quantity="num_batches_tracked",
                    tol=Tolerance(0, 0), cause="num_batches_tracked does not count train batches")

    return prop


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_momentum_none_running_mean_is_mean_of_batch_means(impl):
    cumulative_average(IMPLEMENTATIONS[impl])()


# ---- (e) the oracle's backward is the gradient of its forward, in float64 ----------------------------------------

def _formula(x, weight, bias, eps, running_mean=None, running_var=None):
    """BN written with torch's reductions (not the oracle's code), for autograd to differentiate."""
    dims = oracle.reduce_dims(x)
    if running_mean is None:
        mean, var = x.mean(dims, keepdim=True), x.var(dims, correction=0, keepdim=True)
    else:
        mean, var = oracle.per_channel(running_mean, x), oracle.per_channel(running_var, x)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * oracle.per_channel(weight, x) + oracle.per_channel(bias, x)
    return y


def backward_matches_autograd(train_backward):
    """dx, dγ, dβ from `train_backward` (and oracle.eval_backward) = autograd of _formula, float64, drawn shapes."""

    @given(case=bn_case(dtypes=[torch.float64]), seed=st.integers(0, 2**32 - 1), train=st.booleans())
    def prop(case, seed, train):
        train = train or not case.config.track_running_stats
        x = case.x.detach().clone().requires_grad_(True)
        weight, bias = (None, None) if case.weight is None else \
            (case.weight.clone().requires_grad_(True), case.bias.clone().requires_grad_(True))
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        stats = () if train else (case.running_mean, case.running_var)
        _formula(x, weight, bias, case.config.eps, *stats).backward(dy)
        if train:
            got = train_backward(x, dy, case.config.eps, case.weight)
        else:
            got = oracle.eval_backward(x, dy, *stats, case.config.eps, case.weight)
        where = f"{'train' if train else 'eval'} backward, {case.config} on {tuple(x.shape)}"
        pairs = [("dx", got.x, x.grad)] + ([] if weight is None else
                                           [("dγ", got.weight, weight.grad), ("dβ", got.bias, bias.grad)])
        for quantity, g, expected in pairs:
            scale = max(1.0, float(expected.abs().max()))  # gradients scale with γ/std: relative to the largest
            check_close(g, expected, where=where, quantity=quantity, tol=Tolerance(1e-7, 1e-9 * scale),
                        cause="the analytic backward is not the gradient of the forward", axes=AXES)

    return prop


def test_oracle_backward_matches_autograd_of_float64_formula():
    backward_matches_autograd(oracle.train_backward)()


class _OracleTrainBN(torch.autograd.Function):
    """The oracle's train forward with an analytic backward, for torch.autograd.gradcheck's finite differences."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, backward):
        ctx.save_for_backward(x, weight)
        ctx.eps, ctx.backward = eps, backward
        return oracle.train_forward(x, eps, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        g = ctx.backward(x, dy, ctx.eps, weight)
        return g.x, g.weight, g.bias, None, None


def backward_passes_gradcheck(train_backward):
    """torch.autograd.gradcheck: `train_backward` against central finite differences of oracle.train_forward, on
    small well-conditioned inputs (finite differences need them)."""

    @given(case=bn_case(bn_configs(affine=True, eps=st.sampled_from([1e-5, 1e-3, 1e-1])), dtypes=[torch.float64],
                        max_elements=48, scales=(0.1, 10.0), max_offset_ratio=10.0))
    def prop(case):
        inputs = tuple(t.detach().clone().requires_grad_(True) for t in (case.x, case.weight, case.bias))
        ok = torch.autograd.gradcheck(lambda x, w, b: _OracleTrainBN.apply(x, w, b, case.config.eps, train_backward),
                                      inputs, eps=1e-6, atol=1e-6, rtol=1e-4, raise_exception=False)
        assert ok, f"gradcheck: the train backward disagrees with finite differences on {tuple(case.x.shape)}"

    return prop


def test_oracle_backward_passes_gradcheck():
    backward_passes_gradcheck(oracle.train_backward)()


# ---- every property can fail: hypothesis finds a counterexample for a planted defect ----------------------------

MUTANTS = [
    pytest.param(matches_oracle, EpsOutsideSqrt, "train output", id="oracle-agreement-EpsOutsideSqrt"),
    pytest.param(scale_shift_invariance, Uncentered, "scaled and shifted", id="scale-shift-Uncentered"),
    pytest.param(batch_permutation, GhostBatches, "permuted batch", id="permutation-GhostBatches"),
    pytest.param(batch_permutation, RunningMeanOfLastSample, "running_mean", id="permutation-RunningMeanOfLastSample"),
    pytest.param(eval_is_per_channel_affine, BatchStatsInEval, "split batch", id="eval-affine-BatchStatsInEval"),
    pytest.param(cumulative_average, CumulativeOffByOne, "not the cumulative average",
                 id="cumulative-CumulativeOffByOne"),
    pytest.param(backward_matches_autograd, detached_stats_backward, "dx", id="autograd-detached_stats_backward"),
    pytest.param(backward_passes_gradcheck, detached_stats_backward, "gradcheck",
                 id="gradcheck-detached_stats_backward"),
]


@pytest.mark.parametrize("prop, mutant, message", MUTANTS)
def test_property_finds_counterexample_for_mutant(prop, mutant, message):
    # Stop at the first counterexample (no shrinking) and report that one bug: the point is that one exists.
    search = settings(max_examples=200, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                      database=None)
    with pytest.raises(AssertionError, match=message):
        search(prop(mutant))()

