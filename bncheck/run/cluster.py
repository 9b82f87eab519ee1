"""The SyncBN check inside a torchrun job (`torchrun ... -m bncheck syncbn SPEC`): every rank runs its shard of
each synchronized BN layer of the model, the records are gathered on rank 0, which compares them with one float64
BN over the whole batch; every rank learns the verdict, so that all exit alike."""

import os
from dataclasses import dataclass

import torch

from bncheck.core.capture import capture
from bncheck.core.discover import layer_label
from bncheck.core.errors import BNCheckError, BNCheckSkip, BNCheckUsageError, one_line
from bncheck.core.spec import load
from bncheck.core.state import clone
from bncheck.run.plan import example_input, on_device
from bncheck.run.report import Outcome, Report
from bncheck.run.settings import Settings
from bncheck.syncbn.check import GPU_ONLY_MESSAGE, probed, torch_syncbn_skip
from bncheck.syncbn.compare import build_setup, compare, run_rank
from bncheck.syncbn.targets import is_synchronized, layer_factory, syncbn_targets

TORCHRUN = "torchrun --standalone --nproc-per-node=2 -m bncheck syncbn SPEC"


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    device: torch.device


def _join() -> Rank:
    """This process's place in the torchrun job (its environment), its process group initialized: nccl with one GPU
    per local rank where CUDA is there, else gloo on the CPU."""
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise BNCheckUsageError(f"the syncbn command runs inside a torchrun job, one process per rank: {TORCHRUN}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), device)


def _sample_shapes(spec: str, settings: Settings) -> dict[str, tuple[int, ...]]:
    """Each BN layer's input shape (C, *spatial, spatial sizes capped at 4) in one eval forward of a copy."""
    loaded = load(spec, seed=settings.seed)
    given, _ = example_input(loaded, settings, "--input-shape ")
    model = clone(loaded.model)
    inputs = capture(model, on_device(given, model, torch.device("cpu")), train=False).inputs
    return {name: (x.shape[1], *(min(s, 4) for s in x.shape[2:])) for name, x in inputs.items()}


def _one_layer(spec: str, name: str, convert: bool, shape, here: Rank, settings: Settings) -> Outcome:
    """The check of layer `name` on this rank; on rank 0 the verdict, elsewhere a placeholder. Every rank reaches the
    same collectives whatever happens, so that none waits forever."""
    import torch.distributed as dist

    item = f"syncbn[{layer_label(name)}]"
    factory = layer_factory(spec, name, convert, settings.seed)
    probe = probed(factory)
    label = f"{spec} {layer_label(name)}" + (" (converted to nn.SyncBatchNorm)" if convert else "")
    skip = torch_syncbn_skip(probe, here.device.type, label)
    if skip is not None:
        return Outcome(item, name, "skipped", skip)
    sizes = [2 + r for r in range(here.world_size)]  # unequal: averaging per-rank statistics shows
    setup = build_setup(probe, label, torch.float32, sizes, shape, steps=2, seed=settings.seed)
    try:
        record = run_rank(here.rank, here.world_size, here.device, (factory, setup))
    except Exception as exc:  # noqa: BLE001 -- every rank's failure goes to rank 0
        record = one_line(exc)
    gathered = [None] * here.world_size if here.rank == 0 else None
    dist.gather_object(record, gathered, dst=0)
    if here.rank != 0:
        return Outcome(item, name, "passed")
    raised = [(r, g) for r, g in enumerate(gathered) if isinstance(g, str)]
    if raised:
        r, message = raised[0]
        status = "skipped" if GPU_ONLY_MESSAGE in message else "failed"
        return Outcome(item, name, status, f"{label}: rank {r} of {here.world_size} raised {message}")
    try:
        compare(setup, gathered)
    except BNCheckError as exc:
        return Outcome(item, name, "failed", str(exc), error=exc)
    return Outcome(item, name, "passed")


def check_on_cluster(spec: str, settings: Settings, *, convert: bool | None = None) -> Report | None:
    """The SyncBN check of every synchronized BN layer of model `spec` (with `convert`, or when it has none, of
    every torch BN layer converted to nn.SyncBatchNorm), each rank on its own batch; called on every rank of a
    torchrun job. Returns the Report on rank 0, None elsewhere; every rank gets the same `ok` from
    `cluster_verdict`."""
    here = _join()
    model = load(spec, seed=settings.seed).model
    if convert is None:
        convert = not any(is_synchronized(m) for m in model.modules())
    shapes = _sample_shapes(spec, settings)
    outcomes = []
    for name in syncbn_targets(model, convert=convert):
        if name not in shapes:
            outcomes.append(Outcome(f"syncbn[{layer_label(name)}]", name, "skipped",
                                    f"{layer_label(name)} was not called in the forward pass on the example input"))
            continue
        outcomes.append(_one_layer(spec, name, convert, shapes[name], here, settings))
    header = (f"bncheck syncbn: {spec} across {here.world_size} ranks on {here.device.type} "
              f"({'nccl' if here.device.type == 'cuda' else 'gloo'}), torch {torch.__version__}, seed {settings.seed}"
              + (", torch's BN layers converted to nn.SyncBatchNorm" if convert else ""))
    if not outcomes:
        raise BNCheckSkip(f"{spec}: no synchronized BN layer and none to convert")
    return Report(spec, header, outcomes) if here.rank == 0 else None


def cluster_verdict(report: Report | None) -> bool:
    """Rank 0's verdict (the report has no failure), sent to every rank; the process group is then destroyed."""
    import torch.distributed as dist

    verdict = [report.ok if report is not None else None]
    dist.broadcast_object_list(verdict, src=0)
    dist.destroy_process_group()
    return bool(verdict[0])
