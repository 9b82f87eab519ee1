"""One SyncBN check's data and verdict: its Setup (state, per-rank batches), what each rank records (run_rank), and
compare, which raises BNCheckError where a rank differs from one float64 BN over the whole concatenated batch."""

from dataclasses import dataclass

import torch
from torch import nn

from bncheck.core import oracle
from bncheck.core.compare import check_close
from bncheck.core.harness import nontrivial_state, set_state
from bncheck.core.tolerances import Tolerance, tolerance_for

__all__ = ["Setup", "build_setup", "compare", "run_rank"]


@dataclass
class Setup:
    """Everything the parent decides before starting the workers: what every rank loads and runs, and what the
    oracle needs."""

    label: str
    world_size: int
    dtype: torch.dtype  # of the data (float64: the workers run the layer in float64)
    batch_sizes: list[int]
    eps: float
    momentum: float | None
    state: dict  # the initial state_dict every rank loads (CPU tensors)
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    tracks: bool
    steps: list[tuple[list[torch.Tensor], list[torch.Tensor]]]  # per train step: per-rank x, per-rank dy
    eval_x: list[torch.Tensor]  # per rank


def _rank_data(shape, rank: int, gen: torch.Generator, dtype) -> torch.Tensor:
    """Rank r's samples: its own per-channel mean and scale (offset grows with r, scale 1 + 1.5·r)."""
    channels = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    scale = (1.0 + 1.5 * rank) * (0.5 + torch.rand(channels, generator=gen, dtype=torch.float64))
    offset = 2.0 * rank - 1.0 + torch.randn(channels, generator=gen, dtype=torch.float64)
    return (x * oracle.per_channel(scale, x) + oracle.per_channel(offset, x)).to(dtype)


def _ranks_data(batch_sizes: list[int], sample_shape: tuple[int, ...], gen: torch.Generator, dtype) -> list:
    """One batch per rank (_rank_data), drawn in rank order from `gen`."""
    return [_rank_data((b, *sample_shape), r, gen, dtype) for r, b in enumerate(batch_sizes)]


def build_setup(probe: nn.Module, label: str, dtype: torch.dtype, batch_sizes: list[int],
                sample_shape: tuple[int, ...], steps: int, seed: int) -> Setup:
    """Give `probe` a nontrivial state and draw every rank's data from `seed`: the Setup of one check."""
    set_state(probe, nontrivial_state(sample_shape[0], seed))
    state = {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}
    weight = state.get("weight") if isinstance(getattr(probe, "weight", None), nn.Parameter) else None
    bias = state.get("bias") if isinstance(getattr(probe, "bias", None), nn.Parameter) else None
    gen = torch.Generator().manual_seed(seed)
    steps_data = []
    for _ in range(steps):
        xs = _ranks_data(batch_sizes, sample_shape, gen, dtype)
        steps_data.append((xs, [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype) for x in xs]))
    return Setup(label=label, world_size=len(batch_sizes), dtype=dtype, batch_sizes=batch_sizes,
                 eps=float(getattr(probe, "eps", 1e-5)), momentum=getattr(probe, "momentum", 0.1), state=state,
                 weight=weight, bias=bias,
                 tracks=isinstance(getattr(probe, "running_mean", None), torch.Tensor), steps=steps_data,
                 eval_x=_ranks_data(batch_sizes, sample_shape, gen, dtype))


def run_rank(rank: int, world_size: int, device: torch.device, payload: tuple) -> dict:
    """The rank function: payload (module_factory, Setup); runs rank `rank`'s train steps (forward and backward)
    and, when the layer tracks running statistics, its eval forward; returns what compare reads, on the CPU."""
    factory, setup = payload
    module = factory()
    module.load_state_dict(setup.state)
    module.to(device)
    if setup.dtype == torch.float64:
        module.double()
    params = {key: getattr(module, key, None) for key in ("weight", "bias")}
    out = {"steps": [], "eval": None}
    for xs, dys in setup.steps:
        module.train()
        module.zero_grad(set_to_none=True)
        x = xs[rank].to(device).requires_grad_(True)
        y = module(x)
        y.backward(dys[rank].to(device))
        record = {"output": y.detach().cpu(), "dx": x.grad.detach().cpu()}
        for key, p in params.items():
            record[f"d{key}"] = None if not isinstance(p, torch.Tensor) or p.grad is None else p.grad.detach().cpu()
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(module, key, None)
            record[key] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else None
        out["steps"].append(record)
    if setup.tracks:
        module.eval()
        with torch.no_grad():
            out["eval"] = module(setup.eval_x[rank].to(device)).detach().cpu()
    return out


def _offsets(sizes):
    starts = [0]
    for s in sizes:
        starts.append(starts[-1] + s)
    return starts


def _alternatives(xs, setup: Setup, rank: int, unequal: bool):
    """What known synchronization bugs would output on `rank` (computed only on a failure)."""

    def local():
        return oracle.train_forward(xs[rank], setup.eps, setup.weight, setup.bias)

    def averaged_variances():
        glob = oracle.batch_stats(torch.cat(xs))
        var = torch.stack([oracle.batch_stats(x).var for x in xs]).mean(0)
        return oracle.normalize(xs[rank], glob.mean, var, setup.eps, setup.weight, setup.bias)

    def equal_weights():
        stats = [oracle.batch_stats(x) for x in xs]
        mean = torch.stack([s.mean for s in stats]).mean(0)
        var = torch.stack([s.var + (s.mean - mean) ** 2 for s in stats]).mean(0)
        return oracle.normalize(xs[rank], mean, var, setup.eps, setup.weight, setup.bias)

    no_sync = "no synchronization: each rank normalized with its own batch statistics"
    averaged = ("the ranks' variances were averaged instead of combined: the spread between the ranks' means is "
                "lost (combine sums, sums of squares and counts, or use the parallel variance formula)")
    equal = ("the ranks' statistics were averaged with equal weights although their batch sizes differ "
             "(pytorch/pytorch#22192): weigh each rank by its count")
    out = [(no_sync, local), (averaged, averaged_variances)]
    if unequal:
        out.append((equal, equal_weights))
    return out


def compare(setup: Setup, got: list[dict]) -> None:
    """Raise BNCheckError at the first rank, step and quantity of `got` (run_rank's results, in rank order) that
    differs from the float64 oracle on the whole batch."""
    sizes, ws = setup.batch_sizes, setup.world_size
    starts = _offsets(sizes)
    tol = tolerance_for("output", setup.dtype)
    unequal = len(set(sizes)) > 1
    state = None
    if setup.tracks:
        nbt = setup.state.get("num_batches_tracked")
        state = oracle.RunningStats(setup.state["running_mean"].double(), setup.state["running_var"].double(),
                                    0 if nbt is None else int(nbt))
    for step, (xs, dys) in enumerate(setup.steps):
        x, dy = torch.cat(xs), torch.cat(dys)
        y = oracle.train_forward(x, setup.eps, setup.weight, setup.bias)
        grads = oracle.train_backward(x, dy, setup.eps, setup.weight)
        stats = oracle.batch_stats(x)
        x_hat = oracle.normalize(x, stats.mean, stats.var, setup.eps)
        if state is not None:
            state = oracle.update_running(state, x, setup.momentum)
        for rank in range(ws):
            part = slice(starts[rank], starts[rank + 1])
            record = got[rank]["steps"][step]
            where = (f"{setup.label}: rank {rank} of {ws} (batch {sizes[rank]} of the global {sum(sizes)}, "
                     f"per-rank batch sizes {sizes}), train step {step + 1}")
            cause = "the statistics are not those of the whole global batch"
            check_close(record["output"], y[part], where=where, quantity="output", tol=tol, cause=cause,
                        hypotheses=_alternatives(xs, setup, rank, unequal), axes=("sample", "channel"))
            check_close(record["dx"], grads.x[part], where=where, quantity="dx (gradient w.r.t. the rank's input)",
                        tol=tol, axes=("sample", "channel"),
                        cause="the backward does not all-reduce the gradient terms of the batch statistics")
            dims = oracle.reduce_dims(x)
            shares = {"dweight": (dy[part] * x_hat[part]).sum(dims), "dbias": dy[part].sum(dims)}
            for key, quantity in (("dweight", "dγ (weight.grad, this rank's share)"),
                                  ("dbias", "dβ (bias.grad, this rank's share)")):
                if record.get(key) is not None:
                    check_close(record[key], shares[key], where=where, quantity=quantity, tol=tol,
                                cause="γ/β gradients must be each rank's own sum (DDP adds them up) of dy·x̂ with the "
                                      "global statistics")
            if state is None:
                continue
            for key, expected in (("running_mean", state.mean), ("running_var", state.var)):
                check_close(record[key], expected, where=where, quantity=key,
                            tol=tolerance_for("statistics", record[key].dtype),
                            cause="the running statistics are not updated from the global batch (the variance "
                                  "unbiased with the global count n/(n−1))")
            if record.get("num_batches_tracked") is not None:
                check_close(record["num_batches_tracked"], torch.tensor(state.num_batches_tracked), where=where,
                            quantity="num_batches_tracked", tol=Tolerance(0, 0),
                            cause="num_batches_tracked must count train steps")
    if state is None:
        return
    for rank in range(ws):
        expected = oracle.eval_forward(setup.eval_x[rank], state.mean, state.var, setup.eps, setup.weight, setup.bias)
        check_close(got[rank]["eval"], expected, where=f"{setup.label}: rank {rank} of {ws}, eval mode",
                    quantity="eval output", tol=tol, axes=("sample", "channel"),
                    cause="eval mode must use the (synchronized) running statistics")
