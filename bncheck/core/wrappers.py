"""The model inside what users wrap it in: nn.DataParallel / DistributedDataParallel and torch.compile's
OptimizedModule are seen through (their module is what runs); TorchScript is refused in one line, saying why."""

from torch import nn

from bncheck.core.errors import BNCheckUsageError

# wrapper class -> the attribute that holds the module it runs
_SEEN_THROUGH = {nn.DataParallel: "module", nn.parallel.DistributedDataParallel: "module"}


def _inner(model: nn.Module) -> nn.Module | None:
    for wrapper, attribute in _SEEN_THROUGH.items():
        if isinstance(model, wrapper):
            return getattr(model, attribute)
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return model._orig_mod  # torch.compile's wrapper: the eager module it compiles
    return None


def unwrapped(model: nn.Module, name: str) -> nn.Module:
    """The module bncheck checks for `model` (itself, unless it is a wrapper); BNCheckUsageError naming `name` for
    a TorchScript module, or a model holding one."""
    inner = _inner(model)
    while inner is not None:
        model, inner = inner, _inner(inner)
    return refuse_scripted(model, name)


def refuse_scripted(model: nn.Module, name: str) -> nn.Module:
    """`model`, unless it is or holds TorchScript: then the one-line BNCheckUsageError naming `name`."""
    import torch.jit

    scripted = next((n for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        where = "the model" if scripted == "" else f"its submodule {scripted}"
        raise BNCheckUsageError(f"{name}: {where} is TorchScript (torch.jit.script or trace), whose BN layers run as "
                                f"compiled code that bncheck cannot hook, run alone or copy as an nn.Module: pass "
                                f"the nn.Module you scripted or traced (the eager model) instead")
    return model
