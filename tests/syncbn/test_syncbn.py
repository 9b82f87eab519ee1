"""bncheck.syncbn across real processes: a correct from-scratch synchronized BN passes on CPU/gloo (unequal per-rank
batch sizes, ranks whose data differ in mean and scale, 2 and 3 ranks), the known bugs fail with rank, quantity and
worst element (averaged variances, equal rank weights, statistics reduced outside autograd), torch's nn.SyncBatchNorm
skips in one line on the CPU (runs with nccl on GPUs), and no worker outlives a check, nor a killed checking process.

The layers live in tests/planted/sync.py (module level: worker processes unpickle factories of them).
"""

import contextlib
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from planted import sync as sync_layers
from planted.sync import (
    AveragedVarianceSyncBatchNorm,
    DetachedSyncBatchNorm,
    DyingSyncBatchNorm,
    EqualWeightsSyncBatchNorm,
    HangingSyncBatchNorm,
    RaisingSyncBatchNorm,
    SumSyncBatchNorm,
)
from torch import nn

from bncheck.core.errors import BNCheckError, BNCheckSkip, BNCheckUsageError
from bncheck.core.state import Snapshot
from bncheck.syncbn import assert_syncbn_matches, check, targets
from bncheck.syncbn.launch import RankError, launch

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def _helpers() -> set[int]:
    """multiprocessing's own long-lived helpers (the forkserver, the resource tracker): not the check's workers."""
    from multiprocessing import forkserver, resource_tracker

    pids = {getattr(forkserver._forkserver, "_forkserver_pid", None),
            getattr(resource_tracker._resource_tracker, "_pid", None)}
    return {p for p in pids if p}


def leftover_processes() -> list:
    """Processes started from this one that still run: every descendant (with psutil), else active_children()."""
    try:
        import psutil
    except ImportError:
        return multiprocessing.active_children()
    helpers = _helpers()
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in helpers and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def no_orphans():
    """Fail the test if any worker process survives it."""
    yield
    left = leftover_processes()
    assert not left, f"processes left running after the check: {left}"


# ---- the launcher alone: any rank function, no BN -------------------------------------------------------------

def test_launch_runs_a_rank_function_in_a_gloo_process_group(no_orphans):
    assert launch(sync_layers.all_reduced_rank, 2, backend="gloo", timeout=60) == [1, 1]


def test_launch_reports_the_rank_that_raised_without_waiting_for_its_peer(no_orphans):
    """Rank 0 waits in a collective that rank 1 never joins: the error comes at once, not at the timeout."""
    with pytest.raises(RankError, match=r"^ranks: rank 1 of 2 raised ValueError: planted failure, payload 'p'") as info:
        launch(sync_layers.raising_rank, 2, payload="p", timeout=300, label="ranks")
    assert info.value.rank == 1 and "Traceback" in info.value.traceback


# ---- a correct synchronized BN passes, a wrong one fails ------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    pytest.param({}, id="unequal-2-3-ranks-differ"),
    pytest.param({"batch_sizes": [1, 5], "sample_shape": (3,), "momentum": None}, id="rank-with-one-sample-2d"),
    pytest.param({"world_size": 3, "batch_sizes": [4, 1, 2], "sample_shape": (2, 2, 3, 2), "dtype": torch.float64},
                 id="3-ranks-float64-5d"),
])
def test_from_scratch_sync_bn_matches_one_bn_on_the_global_batch(kwargs, no_orphans):
    momentum = kwargs.pop("momentum", 0.1)
    channels = kwargs.get("sample_shape", (4,))[0]
    kwargs.setdefault("world_size", 2)
    assert_syncbn_matches(functools.partial(SumSyncBatchNorm, channels, momentum=momentum), **kwargs)


def test_averaged_variances_fail_naming_rank_quantity_and_worst_element(no_orphans):
    with pytest.raises(BNCheckError) as info:
        assert_syncbn_matches(functools.partial(AveragedVarianceSyncBatchNorm, 4), world_size=2)
    message = str(info.value)
    assert "rank 0 of 2" in message and "train step 1" in message
    assert "output differs from the float64 oracle" in message
    assert "worst at sample=" in message and "channel=" in message
    assert "variances were averaged instead of combined" in message


def test_equal_rank_weights_pass_equal_batch_sizes_and_fail_unequal_ones(no_orphans):
    """pytorch/pytorch#22192: weighing each rank equally is right only when the batch sizes are equal, so the
    check's default unequal sizes are what catches it."""
    factory = functools.partial(EqualWeightsSyncBatchNorm, 4)
    assert_syncbn_matches(factory, world_size=2, batch_sizes=[3, 3])
    with pytest.raises(BNCheckError, match=r"per-rank batch sizes \[2, 3\].*output differs.*averaged with equal "
                                           r"weights although their batch sizes differ"):
        assert_syncbn_matches(factory, world_size=2)


def test_statistics_reduced_outside_autograd_fail_on_dx(no_orphans):
    """The forward (and running statistics) right, the backward blind to the other ranks: dx names it."""
    with pytest.raises(BNCheckError, match=r"rank 0 of 2.*train step 1: dx \(gradient w\.r\.t\. the rank's "
                                           r"input\) differs.*worst at sample=.*all-reduce the gradient terms"):
        assert_syncbn_matches(functools.partial(DetachedSyncBatchNorm, 4), world_size=2)


# ---- torch's nn.SyncBatchNorm: one-line skip on the CPU, nccl on GPUs -------------------------------------------

def _launch_forbidden(*args, **kwargs):
    raise AssertionError("no process may start for a check that cannot run here")


@pytest.mark.parametrize("device", [pytest.param("cpu", id="cpu-asked"), pytest.param(None, id="default-device")])
def test_torch_syncbn_on_cpu_skips_in_one_line_without_processes(device, monkeypatch, no_orphans):
    if device is None and GPUS:
        pytest.skip("this machine has a GPU: the default device runs torch's SyncBatchNorm")
    monkeypatch.setattr(check, "launch", _launch_forbidden)
    with pytest.raises(BNCheckSkip) as info:
        assert_syncbn_matches(functools.partial(nn.SyncBatchNorm, 4), world_size=2, device=device)
    message = str(info.value)
    assert "\n" not in message
    assert check.GPU_ONLY_MESSAGE in message


def test_too_few_gpus_for_nccl_skips_without_processes(monkeypatch):
    monkeypatch.setattr(check, "launch", _launch_forbidden)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BNCheckSkip, match=r"world_size 2 needs 2 CUDA device\(s\).*found 1"):
        assert_syncbn_matches(functools.partial(nn.SyncBatchNorm, 4), world_size=2)


@pytest.mark.cuda
@pytest.mark.parametrize("world_size", [
    pytest.param(2, id="2-gpus"),
    # torch's SyncBatchNorm does not synchronize at world size 1: this covers nccl, the devices and the harness.
    pytest.param(1, id="1-gpu-harness"),
])
def test_torch_syncbn_on_gpus_with_nccl(world_size, no_orphans):
    if world_size > GPUS:
        pytest.skip(f"needs {world_size} CUDA GPU(s) for nccl (one process per GPU), found {GPUS}")
    batch_sizes = [2, 3][:world_size]
    assert_syncbn_matches(functools.partial(nn.SyncBatchNorm, 4), world_size=world_size, batch_sizes=batch_sizes,
                          device="cuda", timeout=120)


# ---- usage errors, and no worker outlives a check ----------------------------------------------------------------

def test_unpicklable_factory_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(check, "launch", _launch_forbidden)
    with pytest.raises(BNCheckUsageError, match="must be picklable"):
        assert_syncbn_matches(lambda: SumSyncBatchNorm(4))


@pytest.mark.parametrize("kwargs, message", [
    pytest.param({"steps": 0}, "steps must be at least 1", id="no-steps"),
    pytest.param({"world_size": 0}, "world_size must be at least 1", id="no-ranks"),
    pytest.param({"timeout": 0}, "timeout must be a positive number", id="no-time"),
    pytest.param({"batch_sizes": [3, 0]}, "positive batch size for each of the 2 ranks", id="empty-rank"),
])
def test_bad_settings_are_one_line_usage_errors(kwargs, message, monkeypatch):
    monkeypatch.setattr(check, "launch", _launch_forbidden)
    with pytest.raises(BNCheckUsageError, match=message) as info:
        assert_syncbn_matches(functools.partial(SumSyncBatchNorm, 4), **kwargs)
    assert "\n" not in str(info.value)


# ---- the user's own objects are left as they are ----------------------------------------------------------------

def _unchanged(model: nn.Module, snapshot: Snapshot, types: dict) -> None:
    assert snapshot.differences(model) == []
    assert {name: type(m) for name, m in model.named_modules()} == types


def test_a_factory_returning_a_shared_module_leaves_it_as_it_was(no_orphans):
    """The check sets non-trivial γ, β and running statistics on the module it inspects: a copy, never the
    factory's own (possibly shared, the user's) module."""
    shared = sync_layers.SHARED_SYNC_BN
    before, types = Snapshot.of(shared), {n: type(m) for n, m in shared.named_modules()}
    assert_syncbn_matches(sync_layers.shared_sync_bn, world_size=2)
    _unchanged(shared, before, types)


@pytest.mark.parametrize("attr, convert", [
    pytest.param("PLAIN_MODEL", True, id="converted-to-torch-syncbn"),  # skips on the CPU, after loading
    pytest.param("SYNC_MODEL", False, id="from-scratch-sync-layer"),  # runs on the CPU
])
@pytest.mark.parametrize("name", ["1", ""])
def test_a_model_named_by_instance_is_neither_converted_nor_changed(attr, convert, name, no_orphans):
    """A spec may name the user's model object itself ('module:MODEL'): convert_sync_batchnorm swaps its layers in
    place, and the check would set its state. Both must happen on a copy, whether the check runs or skips."""
    model = getattr(sync_layers, attr)
    before, types = Snapshot.of(model), {n: type(m) for n, m in model.named_modules()}
    factory = targets.layer_factory(f"planted.sync:{attr}", name, convert)
    if name:
        with contextlib.suppress(BNCheckSkip):
            targets.check_model_layer(f"planted.sync:{attr}", name, (4, 3, 3), convert=convert)
    layer = factory()
    _unchanged(model, before, types)
    assert layer is not model.get_submodule(name)


@pytest.mark.parametrize("layer, timeout, message", [
    pytest.param(HangingSyncBatchNorm, 3.0, r"the 2 ranks did not finish within 3 s \(rank\(s\) \[[01]", id="hangs"),
    pytest.param(RaisingSyncBatchNorm, 60.0, "rank 1 of 2 raised RuntimeError: planted failure on rank 1",
                 id="raises"),
    pytest.param(DyingSyncBatchNorm, 60.0, "rank 1 exited with code 3 without a report", id="dies"),
])
def test_workers_always_end(layer, timeout, message, no_orphans):
    with pytest.raises(BNCheckError, match=message):
        assert_syncbn_matches(functools.partial(layer, 4), world_size=2, timeout=timeout)


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended, whoever reaps it
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


KILLED_PARENT = """
import functools, sys
sys.path.insert(0, {tests!r})
from planted.sync import PidFileHangingSyncBatchNorm
from bncheck.syncbn import assert_syncbn_matches, check, targets
assert_syncbn_matches(functools.partial(PidFileHangingSyncBatchNorm, 4, {directory!r}), world_size=2, timeout=300)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and /proc")
def test_workers_exit_when_the_checking_process_is_killed(tmp_path):
    """SIGKILL the process running a check (as a CI job's timeout would) while its workers hang in a collective:
    the workers and the forkserver, their parent, exit by themselves long before the check's 300 s timeout."""
    code = KILLED_PARENT.format(tests=str(Path(__file__).parents[1]), directory=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    pids: set[int] = set()
    try:
        files = [tmp_path / f"rank{r}.pid" for r in range(2)]
        deadline = time.monotonic() + 120
        while not all(f.exists() for f in files):
            if proc.poll() is not None:
                pytest.fail(f"the check ended (code {proc.returncode}) before its workers hung:\n{proc.stderr.read()}")
            assert time.monotonic() < deadline, "the workers never reached their forward"
            time.sleep(0.1)
        pids = {int(p) for f in files for p in f.read_text().split()}
        pids.discard(proc.pid)  # under the spawn start method the workers' parent is the killed process itself
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while not all(_ended(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(p for p in pids if not _ended(p))
        assert not left, f"processes still running 15 s after the checking process was killed: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        for p in pids:  # never leave one behind, even when the test fails
            if not _ended(p):
                os.kill(p, signal.SIGKILL)


# ---- the plugin: a synchronized BN is an item of its own ---------------------------------------------------------

@pytest.fixture
def syncmodels(pytester):
    pytester.makepyfile(syncmodels=sync_layers.SPEC_MODULE)
    pytester.syspathinsert()
    return pytester


@pytest.mark.parametrize("model, extra, outcome, line", [
    pytest.param("scratch", [], {"passed": 1}, "*::syncbn[[]1] PASSED*", id="from-scratch-passes"),
    pytest.param("averaged", [], {"failed": 1}, "*rank 0 of 2*variances were averaged*", id="mutant-fails"),
    pytest.param("torch_sync", [], {"skipped": 1}, "*SKIPPED*SyncBatchNorm expected input tensor to be on GPU*",
                 id="torch-sync-skips-on-cpu"),
    pytest.param("plain", ["--bncheck-syncbn"], {"skipped": 1}, "*SKIPPED*converted to nn.SyncBatchNorm*",
                 id="converted-skips-on-cpu"),
])
def test_plugin_adds_a_syncbn_item(syncmodels, model, extra, outcome, line):
    if GPUS and "skipped" in outcome:
        pytest.skip("on a GPU machine torch's SyncBatchNorm runs (or skips for fewer than 2 GPUs)")
    result = syncmodels.runpytest(f"--bncheck-model=syncmodels:{model}", *extra, "-k", "syncbn", "-rs", "-v",
                                  "-p", "no:cacheprovider")
    result.assert_outcomes(**outcome, deselected=result.parseoutcomes().get("deselected", 0))
    result.stdout.fnmatch_lines([line])


def test_plugin_adds_no_syncbn_item_for_plain_bn(syncmodels):
    result = syncmodels.runpytest("--bncheck-model=syncmodels:plain", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert "syncbn[" not in result.stdout.str()
