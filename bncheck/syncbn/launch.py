"""Run a rank function in `world_size` real processes joined by torch.distributed on the loopback interface, and
return each rank's result; the processes always end, whether a rank fails, raises, hangs or its parent dies."""

import contextlib
import datetime
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

import torch

from bncheck.core.errors import BNCheckError, one_line

__all__ = ["LOOPBACK", "RankError", "launch"]

LOOPBACK = "127.0.0.1"
_SHUTDOWN_GRACE = 5.0  # seconds a worker gets to exit after its report, and after SIGTERM, before SIGKILL
_WORKER_GRACE = 15.0  # a worker past its parent's timeout by this much exits by itself
_DEATH_GRACE = 2.0  # seconds to wait for the exit code of a rank that sent no report, once another rank failed


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


def _worker(rank: int, world_size: int, port: int, backend: str, rank_fn: bytes, payload: bytes, results,
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
        fn, data = pickle.loads(rank_fn), pickle.loads(payload)
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        initialized = True
        report = (rank, "ok", pickle.dumps(fn(rank, world_size, device, data)))
    except BaseException as exc:  # noqa: BLE001 -- everything goes to the parent, traceback included
        report = (rank, "error", one_line(exc), traceback.format_exc())
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
                                       f"os._exit in user code), or it could not start (its function must be "
                                       f"importable in a fresh process; see its stderr)") from None
            else:
                continue
        reports[report[0]] = report
        if report[1] != "ok":
            break
    return reports


def launch(rank_fn, world_size: int, *, payload=None, backend: str = "gloo", timeout: float = 60.0,
           start_method: str | None = None, label: str = "launch") -> list:
    """`rank_fn(rank, world_size, device, payload)` in each of `world_size` processes, every one in a process group
    of `backend` ('gloo' on the CPU, or 'nccl' with rank r on cuda:r); returns the results in rank order.

    rank_fn, payload and the results must be picklable (rank_fn a module-level function or a functools.partial of
    one). Raises RankError (prefixed with `label`) when a rank raises, BNCheckError when one exits without a
    report or the whole run takes longer than `timeout` seconds; every worker has ended by then.
    start_method: multiprocessing start method (default forkserver, which imports torch once, else spawn).
    """
    import torch.distributed as dist

    # Bytes, not objects, cross the process boundary: multiprocessing would hand tensors over through shared
    # memory that lives only as long as the sender, and a worker may exit before its report is read.
    pickled_fn, pickled_payload = pickle.dumps(rank_fn), pickle.dumps(payload)
    # The rendezvous store lives in this process, bound to port 0 on the loopback address: the OS picks a free
    # port and no other process can take it between choosing and binding.
    store = dist.TCPStore(LOOPBACK, 0, None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout))
    ctx = _context(_start_method(start_method))
    results = ctx.Queue()
    processes = []
    reports = {}
    try:
        for rank in range(world_size):
            processes.append(ctx.Process(target=_worker, name=f"bncheck-rank{rank}", daemon=True,
                                         args=(rank, world_size, store.port, backend, pickled_fn, pickled_payload,
                                               results, timeout, list(sys.path), os.getcwd())))
            processes[-1].start()
        reports = _collect(processes, results, world_size, timeout, label)
        # A rank that died silently makes its peers' collectives fail: that rank, not theirs, is the news. Its
        # peer may report the failure before the dead process is reaped, hence the short wait for its exit code.
        for r, p in enumerate(processes):
            if r not in reports:
                p.join(timeout=_DEATH_GRACE)
        # Exit code 0: the rank did report (a failure of its own, left unread after the first), it did not crash.
        crashed = {r: p.exitcode for r, p in enumerate(processes) if r not in reports and p.exitcode not in (None, 0)}
    finally:
        complete = len(reports) == world_size and all(r[1] == "ok" for r in reports.values())
        _shutdown(processes, patient=complete)
        results.close()
        results.cancel_join_thread()
        del store
    for rank, report in sorted(reports.items()):
        if report[1] == "error":
            tail = "".join(report[3].strip().splitlines(keepends=True)[-6:])
            first = "".join(f"rank {r} exited with code {code} without a report, then " for r, code in crashed.items())
            raise RankError(f"{label}: {first}rank {rank} of {world_size} raised {report[2]}\n{tail}",
                            rank, report[2], report[3])
    return [pickle.loads(reports[rank][2]) for rank in range(world_size)]
