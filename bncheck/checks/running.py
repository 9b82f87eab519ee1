"""Running statistics: the momentum update of mean, unbiased variance and num_batches_tracked."""

import torch

from bncheck.core import oracle
from bncheck.core.compare import check_close, fail
from bncheck.core.harness import LayerCase, run
from bncheck.core.threads import single_threaded
from bncheck.core.tolerances import tolerance


def _bug_variants(state: oracle.RunningStats, x, momentum, eps):
    """What a known bug would store after one step: (cause, mean, var)."""
    stats = oracle.batch_stats(x)
    m = oracle.momentum_factor(momentum, state.num_batches_tracked + 1)
    mix = lambda old, new, w: (1 - w) * old + w * new  # noqa: E731
    return [
        ("momentum convention flipped (Keras/TF: running = m·running + (1 − m)·batch)",
         mix(state.mean, stats.mean, 1 - m), mix(state.var, stats.unbiased_var, 1 - m)),
        ("the running variance takes the biased batch variance; it must take the unbiased one (n/(n−1))",
         mix(state.mean, stats.mean, m), mix(state.var, stats.var, m)),
        ("momentum=None is not treated as a cumulative average (1/num_batches_tracked)" if momentum is None else
         f"the layer ignores its momentum={momentum:g} and uses torch's default 0.1",
         mix(state.mean, stats.mean, 0.1), mix(state.var, stats.unbiased_var, 0.1)),
        ("the running statistics are not updated in train mode", state.mean, state.var),
        ("the running statistics are replaced by the batch statistics instead of averaged",
         stats.mean, stats.unbiased_var),
        ("eps is added to the running variance (it belongs only inside the sqrt of the normalization)",
         mix(state.mean, stats.mean, m), mix(state.var, stats.unbiased_var, m) + eps),
    ]


@single_threaded
def assert_running_stats(layer, x, *, name: str = "", seed: int = 0) -> None:
    """After each of several train batches from a non-trivial start, running mean, running variance and
    num_batches_tracked equal the oracle's: running ← (1 − m)·running + m·batch (variance unbiased);
    with momentum=None, m = 1/num_batches_tracked. Checks the layer's momentum, and None for torch's BN family."""
    case = LayerCase(layer, name, x, seed)
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
            tol = tolerance(torch.float32)
            check_close(twin.running_mean, state.mean, where=where, quantity="running_mean", tol=tol,
                        hypotheses=[(c, lambda v=mean: v) for c, mean, _ in variants],
                        cause="wrong running-mean update (momentum convention, or the wrong batch mean)")
            check_close(twin.running_var, state.var, where=where, quantity="running_var", tol=tol,
                        hypotheses=[(c, lambda v=var: v) for c, _, var in variants],
                        cause="wrong running-variance update (unbiased n/(n−1) factor, momentum, or eps added)")
            if case.has_num_batches and int(twin.num_batches_tracked) != state.num_batches_tracked:
                raise fail(where, f"num_batches_tracked is {int(twin.num_batches_tracked)}, expected "
                           f"{state.num_batches_tracked}", "num_batches_tracked must count train batches (+1 each)")
