"""Synchronized BatchNorm, checked across real processes: a global batch split over ranks must give exactly what one
BatchNorm gives on the whole concatenated batch, whatever the per-rank batch sizes.

``assert_syncbn_matches(factory, world_size=2)`` starts `world_size` processes joined by torch.distributed on the
loopback interface only (gloo on the CPU; nccl, one process per GPU, for CUDA), gives each rank a slice of one global
batch (unequal slice sizes by default, and ranks whose data differ in mean and scale), runs train steps with a
backward and an eval forward, and compares every rank's output, running statistics and gradients with bncheck's
float64 oracle on the whole batch. The processes always end: a run that fails, raises or hangs is terminated (then
killed) before the error is raised, and a worker whose parent dies exits by itself.

The factory is called in every worker process, so it must be picklable: a module-level function or class, or a
``functools.partial`` of one, never a lambda or a local function::

    import functools
    from bncheck.syncbn import assert_syncbn_matches

    def test_my_sync_bn():  # on the CPU, with gloo
        assert_syncbn_matches(functools.partial(MySyncBatchNorm, 8), world_size=2)

A complete example, and what a failure says: docs/PROPERTIES.md.

torch's own ``nn.SyncBatchNorm`` runs only on GPU/XPU: with a process group and CPU input it raises "SyncBatchNorm
expected input tensor to be on GPU ...". Without enough CUDA devices the check raises BNCheckSkip with a one-line
reason, without starting any process.
"""

import contextlib
import datetime
import functools
import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bncheck.core import oracle
from bncheck.core.compare import check_close
from bncheck.core.discover import is_batchnorm, layer_label
from bncheck.core.errors import BNCheckError, BNCheckSkip, BNCheckUsageError, one_line
from bncheck.core.harness import nontrivial_state, set_state
from bncheck.core.state import clone
from bncheck.core.tolerances import Tolerance, tolerance

__all__ = ["assert_syncbn_matches", "check_model_layer", "is_synchronized", "layer_factory", "syncbn_targets"]

LOOPBACK = "127.0.0.1"
GPU_ONLY_MESSAGE = "SyncBatchNorm expected input tensor to be on GPU"
_SHUTDOWN_GRACE = 5.0  # seconds a worker gets to exit after its report, and after SIGTERM, before SIGKILL
_WORKER_GRACE = 15.0  # a worker past its parent's timeout by this much exits by itself
_DEATH_GRACE = 2.0  # seconds to wait for the exit code of a rank that sent no report, once another rank failed


def is_synchronized(module: nn.Module) -> bool:
    """torch's nn.SyncBatchNorm and its subclasses, or a BN-like module whose class name says "Sync"."""
    return isinstance(module, nn.SyncBatchNorm) or ("sync" in type(module).__name__.lower() and is_batchnorm(module))


def syncbn_targets(model: nn.Module, convert: bool = False) -> list[str]:
    """Names of the layers the SyncBN check runs on: the synchronized ones, and with `convert` also every layer
    that nn.SyncBatchNorm.convert_sync_batchnorm turns into one (torch's BN classes and their subclasses)."""
    return [name for name, m in model.named_modules() if is_synchronized(m) or (convert and isinstance(m, _BatchNorm))]


def _load_layer(spec: str, name: str, convert: bool = False) -> nn.Module:
    from bncheck.core.spec import load

    # A spec may name the user's own module instance: convert_sync_batchnorm (which swaps layers in place and
    # shares γ, β and the running statistics with the new ones) and the check's state go to a copy only.
    layer = clone(load(spec).model.get_submodule(name))
    return nn.SyncBatchNorm.convert_sync_batchnorm(layer) if convert else layer


def layer_factory(spec: str, name: str = "", convert: bool = False):
    """A picklable factory of (a copy of) the layer `name` (qualified, '' for the whole model) of the model `spec`
    ('module.path:attr'), converted to nn.SyncBatchNorm when `convert`: each worker loads the model anew, and the
    model `spec` names is never changed."""
    return functools.partial(_load_layer, spec, name, convert)


def check_model_layer(spec: str, name: str, sample_shape, *, convert: bool = False, seed: int = 0) -> None:
    """assert_syncbn_matches, world size 2, on layer `name` of model `spec`, with samples shaped like
    `sample_shape` (C, *spatial; spatial sizes capped at 4 to keep the processes quick)."""
    channels, *spatial = sample_shape
    label = f"{spec} {layer_label(name)}" + (" (converted to nn.SyncBatchNorm)" if convert else "")
    assert_syncbn_matches(layer_factory(spec, name, convert), world_size=2, seed=seed, name=label,
                          sample_shape=(channels, *(min(s, 4) for s in spatial)))


def _uses_torch_syncbn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())


def _default_sample_shape(module: nn.Module, channels: int) -> tuple[int, ...]:
    if isinstance(module, nn.BatchNorm1d):
        return (channels, 5)
    if isinstance(module, nn.BatchNorm3d):
        return (channels, 2, 3, 2)
    return (channels, 3, 4)


def _loopback_interface() -> str | None:
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


@dataclass
class _Setup:
    """Everything the parent decides before starting the workers, and the oracle's expectations."""

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


def _channels(module: nn.Module) -> int | None:
    for key in ("num_features", "weight", "running_mean"):
        value = getattr(module, key, None)
        if isinstance(value, int):
            return value
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            return value.shape[0]
    return None


def _rank_data(shape, rank: int, gen: torch.Generator, dtype) -> torch.Tensor:
    """Rank r's samples: its own per-channel mean and scale (offset grows with r, scale 1 + 1.5·r)."""
    channels = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    scale = (1.0 + 1.5 * rank) * (0.5 + torch.rand(channels, generator=gen, dtype=torch.float64))
    offset = 2.0 * rank - 1.0 + torch.randn(channels, generator=gen, dtype=torch.float64)
    return (x * oracle.per_channel(scale, x) + oracle.per_channel(offset, x)).to(dtype)


def _serialize(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _deserialize(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


# ---- the worker (one per rank) --------------------------------------------------------------------------------

def _exit_with_parent(deadline: float) -> None:
    """Exit this worker when its parent process ends, or at `deadline` (time.monotonic()), whichever comes first."""
    parent = multiprocessing.parent_process()
    remaining = max(0.0, deadline - time.monotonic())
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel], timeout=remaining)
    else:
        time.sleep(remaining)
    os._exit(70)


def _run_rank(device: torch.device, factory, data: dict) -> dict:
    module = factory()
    module.load_state_dict(data["state"])
    module.to(device)
    if data["double"]:
        module.double()
    params = {key: getattr(module, key, None) for key in ("weight", "bias")}
    out = {"steps": [], "eval": None}
    for x, dy in data["steps"]:
        module.train()
        module.zero_grad(set_to_none=True)
        x = x.to(device).requires_grad_(True)
        y = module(x)
        y.backward(dy.to(device))
        record = {"output": y.detach().cpu(), "dx": x.grad.detach().cpu()}
        for key, p in params.items():
            record[f"d{key}"] = None if not isinstance(p, torch.Tensor) or p.grad is None else p.grad.detach().cpu()
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(module, key, None)
            record[key] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else None
        out["steps"].append(record)
    if data["eval_x"] is not None:
        module.eval()
        with torch.no_grad():
            out["eval"] = module(data["eval_x"].to(device)).detach().cpu()
    return out


def _worker(rank: int, world_size: int, port: int, backend: str, factory: bytes, payload: bytes, results,
            timeout: float, sys_path: list[str], cwd: str):
    threading.Thread(target=_exit_with_parent, args=(time.monotonic() + timeout + _WORKER_GRACE,), daemon=True).start()
    import torch.distributed as dist

    # A forkserver keeps the sys.path and cwd it started with: take the caller's current ones before unpickling.
    sys.path[:] = sys_path
    os.chdir(cwd)

    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    interface = _loopback_interface()
    if interface:  # keep gloo and nccl's bootstrap on the loopback interface
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    torch.set_num_threads(1)
    initialized = False
    try:
        data, factory = _deserialize(payload), pickle.loads(factory)
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        initialized = True
        report = (rank, "ok", _serialize(_run_rank(device, factory, data)))
    except BaseException as exc:  # noqa: BLE001 -- everything goes to the parent, traceback included
        status = "gpu-only" if GPU_ONLY_MESSAGE in str(exc) else "error"
        report = (rank, status, one_line(exc), traceback.format_exc())
    results.put(report)
    if initialized:
        with contextlib.suppress(RuntimeError, ValueError):  # a peer that died already: nothing left to tear down
            dist.destroy_process_group()


# ---- the parent ---------------------------------------------------------------------------------------------------

def _start_method(requested: str | None) -> str:
    if requested:
        return requested
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _context(method: str):
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":  # the server imports torch once; each worker then starts in a fraction of a second
        ctx.set_forkserver_preload(["torch", "torch.distributed", __name__])
    return ctx


def _shutdown(processes, patient: bool) -> None:
    """Join every worker; terminate, then kill, any that is left. Never returns while one still runs."""
    started = [p for p in processes if p.pid is not None]
    if patient:
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        for p in started:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
    for signal_name in ("terminate", "kill"):
        alive = [p for p in started if p.is_alive()]
        for p in alive:
            getattr(p, signal_name)()
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        for p in alive:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in started:
        if p.is_alive():  # a process that survives SIGKILL (uninterruptible sleep): wait for it
            p.join()


def _collect(processes, results, world_size: int, timeout: float, label: str) -> dict:
    """Reports by rank; stops at the first report that is not a success (the other ranks may be stuck in a
    collective), at a worker that died without reporting, or at the timeout."""
    reports, deadline = {}, time.monotonic() + timeout
    while len(reports) < world_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = [r for r in range(world_size) if r not in reports]
            raise BNCheckError(f"{label}: rank(s) {missing} of {world_size} did not finish within {timeout:g} s "
                               f"(terminated). Likely cause: a collective that not every rank reaches, e.g. a "
                               f"synchronization only some ranks run, or a process group that never formed")
        try:
            report = results.get(timeout=min(0.2, remaining))
        except queue.Empty:
            dead = [r for r, p in enumerate(processes) if r not in reports and p.exitcode is not None]
            if dead:
                try:  # a report sent just before the exit may still be in the pipe
                    report = results.get(timeout=1.0)
                except queue.Empty:
                    r = dead[0]
                    raise BNCheckError(f"{label}: rank {r} exited with code {processes[r].exitcode} without a "
                                       f"report. Likely cause: the process crashed (out of memory, a signal, "
                                       f"os._exit in user code), or it could not unpickle the factory (it must be "
                                       f"importable in a fresh process; see its stderr)") from None
            else:
                continue
        reports[report[0]] = report
        if report[1] != "ok":
            break
    return reports


def _launch(setup: _Setup, factory, backend: str, timeout: float, start_method: str | None) -> dict:
    import torch.distributed as dist

    # The rendezvous store lives in this process, bound to port 0 on the loopback address: the OS picks a free
    # port and no other process can take it between choosing and binding.
    store = dist.TCPStore(LOOPBACK, 0, None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout))
    ctx = _context(_start_method(start_method))
    results = ctx.Queue()
    processes = []
    reports = {}
    pickled_factory = pickle.dumps(factory)
    try:
        for rank in range(setup.world_size):
            payload = _serialize({
                "state": setup.state, "double": setup.dtype == torch.float64,
                "steps": [(xs[rank], dys[rank]) for xs, dys in setup.steps],
                "eval_x": setup.eval_x[rank] if setup.tracks else None,
            })
            processes.append(ctx.Process(target=_worker, name=f"bncheck-syncbn-rank{rank}", daemon=True,
                                         args=(rank, setup.world_size, store.port, backend, pickled_factory,
                                               payload, results, timeout, list(sys.path), os.getcwd())))
            processes[-1].start()
        reports = _collect(processes, results, setup.world_size, timeout, setup.label)
        # A rank that died silently makes its peers' collectives fail: that rank, not theirs, is the news. Its
        # peer may report the failure before the dead process is reaped, hence the short wait for its exit code.
        for r, p in enumerate(processes):
            if r not in reports:
                p.join(timeout=_DEATH_GRACE)
        crashed = {r: p.exitcode for r, p in enumerate(processes) if r not in reports and p.exitcode is not None}
    finally:
        complete = len(reports) == setup.world_size and all(r[1] == "ok" for r in reports.values())
        _shutdown(processes, patient=complete)
        results.close()
        results.cancel_join_thread()
        del store
    ranked = sorted(reports.items())
    for _, report in ranked:  # a GPU-only layer on the CPU: every rank says so, and it is a skip
        if report[1] == "gpu-only":
            raise BNCheckSkip(f"{setup.label}: {report[2]} (torch's nn.SyncBatchNorm rejects CPU input under a "
                              f"process group)")
    for rank, report in ranked:
        if report[1] == "error":
            tail = "".join(report[3].strip().splitlines(keepends=True)[-6:])
            first = "".join(f"rank {r} exited with code {code} without a report, then " for r, code in crashed.items())
            raise BNCheckError(f"{setup.label}: {first}rank {rank} of {setup.world_size} raised {report[2]}\n{tail}")
    return {rank: _deserialize(report[2]) for rank, report in reports.items()}


# ---- the expectation and the comparison -------------------------------------------------------------------------

def _offsets(sizes):
    starts = [0]
    for s in sizes:
        starts.append(starts[-1] + s)
    return starts


def _alternatives(xs, setup: _Setup, rank: int, unequal: bool):
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


def _compare(setup: _Setup, got: dict) -> None:
    sizes, ws = setup.batch_sizes, setup.world_size
    starts = _offsets(sizes)
    tol = tolerance(setup.dtype)
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
                check_close(record[key], expected, where=where, quantity=key, tol=tolerance(record[key].dtype),
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


def _check_arguments(module_factory, world_size: int, steps: int, timeout: float) -> None:
    """Raise BNCheckUsageError (one line) for a world_size or steps below 1, a timeout that is not positive, or a
    factory that cannot be pickled."""
    if world_size < 1:
        raise BNCheckUsageError(f"world_size must be at least 1, got {world_size}")
    if steps < 1:
        raise BNCheckUsageError(f"steps must be at least 1 (train steps per check), got {steps}")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise BNCheckUsageError(f"timeout must be a positive number of seconds, got {timeout}")
    try:
        pickle.dumps(module_factory)
    except Exception as exc:
        raise BNCheckUsageError(f"module_factory must be picklable, since every worker process calls it: use a "
                                f"module-level function or class, or functools.partial of one, not a lambda or a "
                                f"local function ({one_line(exc)})") from exc


def _probe(module_factory) -> nn.Module:
    """A copy of the module the factory returns, to inspect and set state on (the factory may return a shared
    module)."""
    probe = module_factory()
    if not isinstance(probe, nn.Module):
        raise BNCheckUsageError(f"module_factory returned {type(probe).__name__}, expected an nn.Module")
    return clone(probe)


def _device_type(device, probe: nn.Module, label: str, world_size: int) -> str:
    """The device type the workers use, 'cpu' or 'cuda' (`device` None: 'cuda' for torch's nn.SyncBatchNorm when
    available); BNCheckSkip when the layer or the world size cannot run on it."""
    torch_sync = _uses_torch_syncbn(probe)
    if device is None:
        device = "cuda" if torch_sync and torch.cuda.is_available() else "cpu"
    device = torch.device(device).type
    if device == "cpu" and torch_sync:
        reason = "this machine has no CUDA device" if not torch.cuda.is_available() else "device='cpu' was asked for"
        raise BNCheckSkip(f"{label}: torch's nn.SyncBatchNorm rejects CPU input under a process group "
                          f"('{GPU_ONLY_MESSAGE} ...'), and {reason}")
    if device == "cuda" and torch.cuda.device_count() < world_size:
        raise BNCheckSkip(f"{label}: world_size {world_size} needs {world_size} CUDA device(s) (nccl, one process "
                          f"per GPU), found {torch.cuda.device_count()}")
    if device not in ("cpu", "cuda"):
        raise BNCheckUsageError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device


def _sample_shape(probe: nn.Module, sample_shape, label: str) -> tuple[int, ...]:
    """`sample_shape` as a tuple, or the default one for the layer's kind and number of channels."""
    if sample_shape is None:
        channels = _channels(probe)
        if channels is None:
            raise BNCheckUsageError(f"{label}: cannot tell the number of channels; pass sample_shape=(C, ...)")
        sample_shape = _default_sample_shape(probe, channels)
    return tuple(sample_shape)


def _batch_sizes(batch_sizes, world_size: int) -> list[int]:
    """The per-rank batch sizes (default 2, 3, 4, ...); BNCheckUsageError unless every rank gets samples."""
    batch_sizes = list(batch_sizes) if batch_sizes is not None else [2 + r for r in range(world_size)]
    if len(batch_sizes) != world_size or min(batch_sizes) < 1:
        raise BNCheckUsageError(f"batch_sizes must give a positive batch size for each of the {world_size} ranks, "
                                f"got {batch_sizes}")
    return batch_sizes


def _build_setup(probe: nn.Module, label: str, dtype: torch.dtype, batch_sizes: list[int],
                 sample_shape: tuple[int, ...], steps: int, seed: int) -> _Setup:
    """Give `probe` a nontrivial state and draw every rank's data from `seed`: the _Setup of one check."""
    set_state(probe, nontrivial_state(sample_shape[0], seed))
    state = {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}
    weight = state.get("weight") if isinstance(getattr(probe, "weight", None), nn.Parameter) else None
    bias = state.get("bias") if isinstance(getattr(probe, "bias", None), nn.Parameter) else None
    gen = torch.Generator().manual_seed(seed)
    steps_data = []
    for _ in range(steps):
        xs = _ranks_data(batch_sizes, sample_shape, gen, dtype)
        steps_data.append((xs, [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype) for x in xs]))
    return _Setup(label=label, world_size=len(batch_sizes), dtype=dtype, batch_sizes=batch_sizes,
                  eps=float(getattr(probe, "eps", 1e-5)), momentum=getattr(probe, "momentum", 0.1), state=state,
                  weight=weight, bias=bias,
                  tracks=isinstance(getattr(probe, "running_mean", None), torch.Tensor), steps=steps_data,
                  eval_x=_ranks_data(batch_sizes, sample_shape, gen, dtype))


def _ranks_data(batch_sizes: list[int], sample_shape: tuple[int, ...], gen: torch.Generator, dtype) -> list:
    """One batch per rank (_rank_data), drawn in rank order from `gen`."""
    return [_rank_data((b, *sample_shape), r, gen, dtype) for r, b in enumerate(batch_sizes)]


def assert_syncbn_matches(module_factory, world_size: int = 2, *, batch_sizes=None, sample_shape=None,
                          steps: int = 2, device=None, dtype: torch.dtype = torch.float32, timeout: float = 60.0,
                          seed: int = 0, name: str = "", start_method: str | None = None) -> None:
    """A synchronized BN over `world_size` real processes equals one BN on the concatenated global batch.

    module_factory: a picklable zero-argument callable returning the synchronized BN layer (a module-level
        function or class, or functools.partial of one); it is called once here and once in every worker. The
        module it returns here is only inspected (its state is set on a copy), so a factory may return a shared
        module.
    batch_sizes: per-rank batch sizes (default: unequal, 2, 3, 4, ...); each rank's data has its own per-channel
        mean and scale, so that averaging per-rank statistics shows.
    sample_shape: one sample's shape (C, *spatial), default (C, 3, 4), (C, 5) for BatchNorm1d, (C, 2, 3, 2) for
        BatchNorm3d; C from the layer's num_features.
    steps: train steps, each a forward and a backward with a random upstream gradient, followed (when the layer
        tracks running statistics) by an eval forward.
    device: "cpu" (gloo) or "cuda" (nccl, one process per GPU); default "cuda" for torch's nn.SyncBatchNorm when
        CUDA is available, else "cpu".
    timeout: seconds for the whole run; every worker is terminated, then killed, when it runs out.
    start_method: multiprocessing start method (default forkserver, which imports torch once, else spawn).

    Per rank and train step: the output, dx, dγ and dβ (each rank's own share, which DDP sums), running_mean,
    running_var and num_batches_tracked must match the float64 oracle on the whole batch within bncheck's
    tolerance for `dtype`; then the eval output. Raises BNCheckError naming the rank, the step, the quantity and
    the worst element; BNCheckSkip when torch's nn.SyncBatchNorm cannot run here (no GPU: it rejects CPU input);
    BNCheckUsageError (one line) for a factory that cannot be pickled, a world_size or steps below 1, a timeout
    that is not positive, or batch_sizes that leave a rank without samples.
    """
    _check_arguments(module_factory, world_size, steps, timeout)
    probe = _probe(module_factory)
    label = name or type(probe).__name__
    device = _device_type(device, probe, label, world_size)
    sample_shape = _sample_shape(probe, sample_shape, label)
    setup = _build_setup(probe, label, dtype, _batch_sizes(batch_sizes, world_size), sample_shape, steps, seed)
    got = _launch(setup, module_factory, "nccl" if device == "cuda" else "gloo", timeout, start_method)
    _compare(setup, got)
