"""Run a rank function in `world_size` processes started by torch's elastic launcher (torchrun's agent, c10d
rendezvous on the loopback address) and return each rank's result. What torch does not do is here: an overall
timeout, workers that exit when the checking process dies, and failures in one line."""

import contextlib
import datetime
import logging
import os
import pickle
import socket
import sys
import threading
import time
import uuid

import torch

from bncheck.core.errors import BNCheckError

__all__ = ["LOOPBACK", "RankError", "launch"]

LOOPBACK = "127.0.0.1"
TIMED_OUT = 70  # the exit code of a worker whose watchdog ended it at the run's deadline
_ELASTIC_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing",
                    "torchelastic-events-null")


class RankError(BNCheckError):
    """A rank's function raised: `rank`, `message` (the exception in one line) and the worker's `traceback`."""

    def __init__(self, text: str, rank: int, message: str, traceback: str):
        super().__init__(text)
        self.rank, self.message, self.traceback = rank, message, traceback


def _loopback_interface() -> str | None:
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


# ---- the worker (one per rank, started by the elastic agent) -------------------------------------------------

def _watchdog(deadline: float, parent: int) -> None:
    """End this worker at `deadline` (time.monotonic()) or as soon as its parent, the agent, is gone: a rank stuck
    in a collective, or orphaned by a killed check, never outlives the check."""
    while time.monotonic() < deadline and os.getppid() == parent:
        time.sleep(0.2)
    os._exit(TIMED_OUT)


def _worker(backend: str, rank_fn: bytes, payload: bytes, seconds: float, sys_path: list[str], cwd: str) -> bytes:
    """One rank: join the process group the agent's environment describes, run the rank function, return its
    pickled result (bytes: the agent hands results back through a queue)."""
    threading.Thread(target=_watchdog, args=(time.monotonic() + seconds, os.getppid()), daemon=True).start()

    import torch.distributed as dist

    sys.path[:] = sys_path  # the caller's, for rank functions and factories imported from its path
    os.chdir(cwd)
    interface = _loopback_interface()
    if interface:  # keep gloo and nccl's bootstrap on the loopback interface
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    torch.set_num_threads(1)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    try:
        return pickle.dumps(pickle.loads(rank_fn)(rank, world_size, device, pickle.loads(payload)))
    finally:
        with contextlib.suppress(RuntimeError, ValueError):  # a peer that died already: nothing left to tear down
            dist.destroy_process_group()


# ---- the caller ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_elastic():
    """The agent logs every failure it handles at length; bncheck reports them in one line instead."""
    loggers = [logging.getLogger(name) for name in _ELASTIC_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _rank_error(failures: dict, world_size: int, seconds: float, label: str) -> BNCheckError:
    """The one error a failed run is reported as: a rank that raised (its message and traceback), else the ranks the
    watchdog ended at the deadline, else a rank that died without a report."""
    raised = {rank: f for rank, f in failures.items() if isinstance(f.message, dict) and f.message.get("message")}
    timed_out = sorted(rank for rank, f in failures.items() if f.exitcode == TIMED_OUT)
    if raised:
        rank = min(raised)
        message = raised[rank].message["message"]
        trace = raised[rank].message.get("extraInfo", {}).get("py_callstack", "")
        tail = "".join(trace.strip().splitlines(keepends=True)[-6:])
        return RankError(f"{label}: rank {rank} of {world_size} raised {message}\n{tail}", rank, message, trace)
    if timed_out:
        return BNCheckError(f"{label}: the {world_size} ranks did not finish within {seconds:g} s (rank(s) "
                            f"{timed_out} ended at the deadline first, then its peers). Likely cause: a collective "
                            f"that not every rank reaches, e.g. a synchronization only some ranks run, or a process "
                            f"group that never formed")
    rank = min(failures)
    return BNCheckError(f"{label}: rank {rank} exited with code {failures[rank].exitcode} without a report. Likely "
                        f"cause: the process crashed (out of memory, a signal, os._exit in user code), or it could "
                        f"not start (its function must be importable in a fresh process; see its stderr)")


def launch(rank_fn, world_size: int, *, payload=None, backend: str = "gloo", timeout: float = 60.0,
           start_method: str | None = None, label: str = "launch") -> list:
    """`rank_fn(rank, world_size, device, payload)` in each of `world_size` processes, every one in a process group
    of `backend` ('gloo' on the CPU, or 'nccl' with rank r on cuda:r); returns the results in rank order.

    The processes are torch.distributed.elastic's (elastic_launch, c10d rendezvous on 127.0.0.1, no restarts).
    rank_fn, payload and the results must be picklable (rank_fn a module-level function or a functools.partial of
    one). Raises RankError (prefixed with `label`) when a rank raises, BNCheckError when one exits without a report
    or the run takes longer than `timeout` seconds; every worker has ended by then, and a worker whose checking
    process is killed ends by itself. start_method: 'spawn' (default), 'forkserver' or 'fork'.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world_size, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"{LOOPBACK}:0", local_addr=LOOPBACK, max_restarts=0,
                          monitor_interval=0.1, start_method=start_method or "spawn", rdzv_timeout=int(timeout) + 1)
    # Bytes, not objects, cross the process boundary: tensors would travel through shared memory that lives only as
    # long as the sender, and a worker exits right after its result is sent.
    args = (backend, pickle.dumps(rank_fn), pickle.dumps(payload), float(timeout), list(sys.path), os.getcwd())
    try:
        with _quiet_elastic():
            results = elastic_launch(config, _worker)(*args)
    except ChildFailedError as exc:
        raise _rank_error(exc.failures, world_size, timeout, label) from None
    return [pickle.loads(results[rank]) for rank in range(world_size)]
