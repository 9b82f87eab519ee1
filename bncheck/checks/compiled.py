"""The model under torch.compile against eager: eval output and state, then train-mode outputs, BN running
statistics and parameter gradients. Both run in float64 (where the model does), so that the sums compiled kernels
reorder cannot decide a comparison: a correct model never fails."""

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from bncheck.checks.registry import check
from bncheck.core.capture import float_leaves, forward
from bncheck.core.compare import check_close, fail
from bncheck.core.discover import STATISTICS, find_batchnorms
from bncheck.core.errors import BNCheckError, BNCheckSkip, BNCheckUsageError, assertion_helper, one_line
from bncheck.core.state import clone, materialized, private_rng
from bncheck.core.tolerances import Tolerance, dtype_name, tolerance_for

# A model that does not run in float64 is compared in its own dtype, compiled with eager, at this
# many times the dtype's tolerance: inductor's reordered sums round differently from eager's.
OWN_DTYPE_FACTOR = 10.0


def _to64(x):
    def cast(t):
        return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    return tuple(map(cast, x)) if isinstance(x, tuple) else cast(x)


class _Run:
    """Two copies from one state, in float64 where the model runs in it (else in its own dtype): `eager`, and
    `module` under `compiled`. In float64 rounding cannot decide a comparison: a batch of two makes BN outputs ±1,
    whose sums tie at a ReLU's kink, and float32's reordered sums flip such ties, and with them whole gradients."""

    def __init__(self, model: nn.Module, x, backend, seed: int):
        base = materialized(clone(model), x)
        self.seed, self.backend = seed, backend
        self.dtype = next((t.dtype for t in [*base.parameters(), *base.buffers()] if t.is_floating_point()),
                          torch.float32)
        self.x = x
        if self.dtype != torch.float64:
            try:
                with torch.no_grad():
                    forward(clone(base).double().eval(), _to64(x))
                base, self.x, self.dtype = base.double(), _to64(x), torch.float64
            except (RuntimeError, TypeError, NotImplementedError):
                pass  # a layer without a float64 kernel: compared in the model's dtype, at a wider tolerance
        self.eager, self.module = clone(base), clone(base)
        for p in [*self.eager.parameters(), *self.module.parameters()]:
            p.grad = None  # gradients the user's model carried are not the ones compared
        self.compiled = torch.compile(self.module, backend=backend)

    def forward_both(self, train: bool, where: str) -> tuple[list, list]:
        """(eager, compiled) float outputs of one forward in `train` mode, each from the same seed."""
        self.eager.train(train)
        self.compiled.train(train)
        with private_rng(self.seed):
            eager = float_leaves(forward(self.eager, self.x))
        with private_rng(self.seed), self._compiling():
            try:
                compiled = float_leaves(self.compiled(*self.x) if isinstance(self.x, tuple) else self.compiled(self.x))
            except Exception as exc:  # eager ran this very input: the failure is the compiler's, not BN's
                backend = getattr(self.backend, "__name__", self.backend)
                inner = getattr(exc, "inner_exception", None)  # what the backend raised, inside dynamo's wrapper
                raise BNCheckSkip(f"{where}: torch.compile could not compile the model (backend {backend!r}): "
                                  f"{one_line(exc)}" + (f" ({one_line(inner)})" if inner else "")) from exc
        return eager, compiled

    def _compiling(self):
        if self.backend != "inductor":
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(fallback_random=True)  # dropout draws eager's random numbers

    def compare(self, got, eager, *, where: str, quantity: str, cause: str, axes=("channel",)) -> None:
        """`got` (compiled) against eager: at float64's tolerance (OWN_DTYPE_FACTOR times the model's dtype's when
        not in float64), its atol scaled by eager's largest magnitude."""
        tol = tolerance_for("output", self.dtype)
        factor = 1.0 if self.dtype == torch.float64 else OWN_DTYPE_FACTOR
        # Gradients are sums of many terms (up to 10^4 in a small resnet): their rounding scales with their size.
        finite = eager.detach().abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
        scale = max(1.0, float(finite.max())) if finite.numel() else 1.0
        tol = Tolerance(tol.rtol * factor, tol.atol * factor * scale)
        check_close(got, eager, where=where, quantity=quantity, tol=tol, cause=cause, axes=axes, equal_nan=True)


def _compare_outputs(run: _Run, outs, where: str, cause: str) -> None:
    eager, compiled = outs
    if len(compiled) != len(eager):
        raise fail(where, f"the compiled model returns {len(compiled)} floating-point outputs, eager "
                          f"{len(eager)}", cause)
    for k, (got, e) in enumerate(zip(compiled, eager)):
        run.compare(got, e, where=where, quantity=f"output {k}", cause=cause, axes=("sample",))


def _compare_statistics(run: _Run, where: str, cause: str) -> None:
    """Every BN layer's running statistics and num_batches_tracked, compiled copy against eager."""
    for bn_name, bn in find_batchnorms(run.eager).items():
        module = run.module.get_submodule(bn_name)
        for stat in STATISTICS:
            eager = getattr(bn, stat, None)
            if isinstance(eager, torch.Tensor):
                run.compare(getattr(module, stat), eager, where=f"{where}, {bn_name}", quantity=stat, cause=cause)
        tracked = getattr(bn, "num_batches_tracked", None)
        if isinstance(tracked, torch.Tensor) and not torch.equal(tracked, module.num_batches_tracked):
            raise fail(f"{where}, {bn_name}", f"num_batches_tracked is {int(module.num_batches_tracked)} compiled, "
                                              f"{int(tracked)} eager", cause)


def _loss(outs: list[torch.Tensor], seed: int) -> torch.Tensor:
    """A fixed random projection of the outputs: a plain sum would give BN's inputs zero gradient."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    return sum((o * w.to(o.device, o.dtype)).sum() for o, w in zip(outs, weights))


def _compare_gradients(run: _Run, outs, where: str, cause: str) -> None:
    for out in outs:
        if any(o.requires_grad for o in out):
            _loss([o for o in out if o.requires_grad], run.seed).backward()
    compiled_params = dict(run.module.named_parameters())
    for p_name, p in run.eager.named_parameters():
        got = compiled_params[p_name].grad
        if (p.grad is None) != (got is None):
            raise fail(where, f"{p_name} has {'no ' if got is None else 'a '}gradient compiled but "
                              f"{'one' if got is None else 'none'} eager", cause)
        if got is not None:
            run.compare(got, p.grad, where=where, quantity=f"gradient of {p_name}", cause=cause, axes=())


@check("model_compile", scope="model", trains_model=True, settings={"seed": "seed"}, option="compile")
@assertion_helper
def assert_compile_matches(model: nn.Module, x, *, name: str = "", steps: int = 2,
                           backend: str | Callable = "inductor", seed: int = 0) -> None:
    """torch.compile(model) computes what eager does: the eval output (and no BN state change), then after `steps`
    train forwards the outputs, every BN's running statistics and num_batches_tracked, and one backward's gradients.

    Copies from identical state, in float64 where the model runs in it; torch._dynamo.reset() first, so that no
    earlier compilation (or an earlier model's recompile limit) is reused. One compilation per mode. A model
    torch.compile cannot compile skips ("torch.compile could not compile the model: ..."); graph breaks are allowed
    and named in a failure's message."""
    import torch._dynamo

    title = name or type(model).__name__
    if steps < 1:
        raise BNCheckUsageError(f"steps must be at least 1 (train forwards before the gradients), got {steps}")
    torch._dynamo.reset()
    run = _Run(model, x, backend, seed)
    stats = torch._dynamo.utils.counters
    graphs, breaks = stats["stats"]["unique_graphs"], dict(stats["graph_break"])
    try:
        _compare_modes(run, title, steps)
    except BNCheckError as exc:
        new = {reason: n - breaks.get(reason, 0) for reason, n in stats["graph_break"].items()}
        new = {reason: n for reason, n in new.items() if n > 0}
        if not new:
            raise
        first = next(iter(new)).splitlines()[0]
        raise BNCheckError(f"{exc} [torch.compile broke the graph {sum(new.values())} times (first: {first}): the "
                           f"code between the graphs ran eagerly]", where=exc.where, quantity=exc.quantity,
                           expected=exc.expected, got=exc.got, index=exc.index, tolerance=exc.tolerance,
                           cause=exc.cause) from None
    if stats["stats"]["unique_graphs"] == graphs:
        raise BNCheckSkip(f"{title}: torch.compile compiled no graph of the model (its forward is excluded from "
                          f"compilation): there was nothing to compare")


def _compare_modes(run: _Run, title: str, steps: int) -> None:
    """Eval mode first (it must leave the state as it is), then `steps` train forwards and one backward."""
    versus = f"{title}, compiled vs eager in {dtype_name(run.dtype)}"  # eager float64: the oracle
    where = f"{versus}, eval mode"
    with torch.no_grad():
        outs = run.forward_both(False, where)
    _compare_outputs(run, outs, where, "the compiled eval path differs from eager: a branch on "
                                       "torch.compiler.is_compiling(), or Python state the compiled code baked in")
    _compare_statistics(run, where, "the compiled eval path updates BN buffers that eager leaves alone (a branch "
                                    "on torch.compiler.is_compiling(), or training=True baked in)")
    where = f"{versus}, train mode"
    for step in range(1, steps + 1):
        outs = run.forward_both(True, f"{where}, step {step}")
        _compare_outputs(run, outs, f"{where}, step {step}", "the compiled train path normalizes differently from "
                                                             "eager (a branch on torch.compiler.is_compiling())")
    _compare_statistics(run, f"{where}, after {steps} steps",
                        "the compiled path updates running statistics differently (another momentum, or no update "
                        "under torch.compiler.is_compiling(), or a Python-side counter or flag the compiled code "
                        "read once and baked in)")
    _compare_gradients(run, outs, f"{where}, backward of step {steps}",
                       "the compiled backward differs from eager's (a custom autograd Function or a branch on "
                       "torch.compiler.is_compiling())")


assert_model_compile = assert_compile_matches  # the item's name (a documented alias)
