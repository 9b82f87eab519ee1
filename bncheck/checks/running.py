"""Running statistics: the momentum update of mean, unbiased variance and num_batches_tracked."""


from bncheck.checks.registry import check
from bncheck.core import oracle
from bncheck.core.compare import check_close, fail, nonconforming
from bncheck.core.discover import unregistered_statistics
from bncheck.core.errors import assertion_helper
from bncheck.core.harness import LayerCase, layer_case, run
from bncheck.core.state import Snapshot
from bncheck.core.threads import single_threaded
from bncheck.core.tolerances import tolerance_for


def _bug_variants(state: oracle.RunningStats, x, momentum, eps):
    """What a known bug would store after one step: (cause, mean, var)."""
    stats = oracle.batch_stats(x)
    nbt = state.num_batches_tracked + 1
    m = oracle.momentum_factor(momentum, nbt)

    def mixed(w: float, var=stats.unbiased_var, plus: float = 0.0):
        return (1 - w) * state.mean + w * stats.mean, (1 - w) * state.var + w * var + plus

    variants = [
        ("momentum convention flipped (Keras/TF: running = m·running + (1 − m)·batch)", *mixed(1 - m)),
        ("the running variance takes the biased batch variance; it must take the unbiased one (n/(n−1))",
         *mixed(m, stats.var)),
        ("momentum=None is not treated as a cumulative average (1/num_batches_tracked)" if momentum is None else
         f"the layer ignores its momentum={momentum:g} and uses torch's default 0.1", *mixed(0.1)),
        ("the running statistics are not updated in train mode", state.mean, state.var),
        ("the running statistics are replaced by the batch statistics instead of averaged", *mixed(1.0)),
        ("eps is added to the running variance (it belongs only inside the sqrt of the normalization)",
         *mixed(m, plus=eps)),
    ]
    if momentum == 0:
        variants.insert(0, ("momentum=0 is taken for momentum=None (a truthiness test such as `self.momentum or "
                            "...`): with momentum=0 the statistics must stay as they are", *mixed(1 / nbt)))
    return variants


@check("running_stats")
@assertion_helper
@single_threaded
def assert_running_stats(layer, x, *, name: str = "", seed: int = 0) -> None:
    """After each of several train batches from a non-trivial start, running mean, running variance and
    num_batches_tracked equal the oracle's: running ← (1 − m)·running + m·batch (variance unbiased);
    with momentum=None, m = 1/num_batches_tracked. Checks the layer's momentum, None for torch's BN family, and 0
    (statistics frozen while training) for any layer with a momentum. Torch conformance (a BNConformanceWarning):
    with track_running_stats switched off at run time, no update at all."""
    case = layer_case(layer, name, x, seed)
    case.require_train_mode()
    case.require_running_stats()
    for momentum in case.momenta:
        twin = case.fresh()
        twin.momentum = momentum
        state = oracle.RunningStats.of(twin)
        for step, probe in enumerate(case.inputs, start=1):
            variants = _bug_variants(state, probe.x, momentum, case.eps)
            run(twin, probe.x, train=True)
            state = oracle.update_running(state, probe.x, momentum)
            where = case.where(probe, f"momentum={momentum}, after train batch {step}")
            tol = tolerance_for("statistics", twin.running_var.dtype)
            check_close(twin.running_mean, state.mean, where=where, quantity="running_mean", tol=tol,
                        hypotheses=[(c, lambda v=mean: v) for c, mean, _ in variants],
                        cause="wrong running-mean update (momentum convention, or the wrong batch mean)")
            check_close(twin.running_var, state.var, where=where, quantity="running_var", tol=tol,
                        hypotheses=[(c, lambda v=var: v) for c, _, var in variants],
                        cause="wrong running-variance update (unbiased n/(n−1) factor, momentum, or eps added)")
            if case.has_num_batches and int(twin.num_batches_tracked) != state.num_batches_tracked:
                raise fail(where, f"num_batches_tracked is {int(twin.num_batches_tracked)}, expected "
                           f"{state.num_batches_tracked}", "num_batches_tracked must count train batches (+1 each)")
    if isinstance(getattr(case.fresh(), "track_running_stats", None), bool):
        _untracked_at_run_time(case)


def _untracked_at_run_time(case: LayerCase) -> None:
    """Torch conformance (BNConformanceWarning): track_running_stats switched off on a layer that has the buffers
    (torch's own test of it): a train forward leaves the statistics and num_batches_tracked as they were."""
    twin = case.fresh().train()
    twin.track_running_stats = False
    before = Snapshot.of(twin)
    probe = case.inputs[0]
    run(twin, probe.x, train=True)
    changed = before.differences(twin)
    if changed:
        nonconforming(case.where(probe, "track_running_stats set to False on a layer with buffers", "train mode"),
                      f"a train forward changed {'; '.join(changed)}", "updates nothing once it is switched off",
                      "the update tests whether the buffers exist, not self.track_running_stats")


@check("statistics_registered")
@assertion_helper
def assert_statistics_registered(layer, x, *, name: str = "", seed: int = 0) -> None:
    """running_mean and running_var are registered buffers (or registered None), not plain tensor attributes."""
    plain = unregistered_statistics(layer)
    if plain:
        case = layer_case(layer, name, x, seed)
        verb = "is a plain tensor attribute" if len(plain) == 1 else "are plain tensor attributes"
        raise fail(case.title, f"{' and '.join(plain)} {verb}, not registered buffers: state_dict() does not save "
                   f"them and .to(device) leaves them behind",
                   "self.running_mean = torch.zeros(C) in __init__; write self.register_buffer('running_mean', "
                   "torch.zeros(C)) (and the same for running_var)")
