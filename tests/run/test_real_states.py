"""Correct models handed over in the states and wrappers real users hand them over in (trained statistics, half
precision, channels_last, frozen, norm_eval, fx / DataParallel / compile / TorchScript, weight- and spectral-normed
convs): each passes every item of check_model, and is left exactly as it was (state_dict bit for bit, every
module's training flag, every parameter's requires_grad). A wrapper bncheck cannot see through is one usage error
saying why and what to pass instead."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bncheck import BNCheckUsageError, check_model
from bncheck.examples import seed_cnn

SHAPE = (3, 12, 12)


def small_net() -> nn.Module:
    """conv-BN-ReLU twice, global pool, linear-BN1d-ReLU, linear: a BatchNorm2d pair fed by convs and a BatchNorm1d."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 4),
    )


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(n: int = 8, shape=SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, *shape), generator=_gen(seed))


def _fit(model: nn.Module, steps: int, lr: float, *, batch: int = 16, seed: int = 0) -> nn.Module:
    """`steps` SGD steps (momentum 0.9) on a fixed synthetic 4-class problem: a model really trained."""
    gen = _gen(seed)
    data = torch.randn(256, *SHAPE, generator=gen)
    labels = (data[:, 0].mean((1, 2)) > 0).long() + 2 * (data[:, 1].mean((1, 2)) > 0).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        loss = F.cross_entropy(model(data[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def _extreme_statistics(model: nn.Module) -> nn.Module:
    """A long-trained model's statistics, set by hand: running_var spread over 1e-6..1e3 with dead channels
    (running_var exactly 0 and γ exactly 0), running means around 1e3, num_batches_tracked 300000."""
    gen = _gen(7)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            c = bn.num_features
            var = torch.logspace(-6, 3, c)[torch.randperm(c, generator=gen)]
            var[0] = 0.0
            bn.running_var.copy_(var)
            bn.running_mean.copy_(1e3 * (1 + 0.1 * torch.randn(c, generator=gen)))
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.weight[0] = 0.0
            bn.weight[c // 2] = 0.0
            bn.bias.copy_(torch.randn(c, generator=gen))
            bn.num_batches_tracked.fill_(300000)
    return model


# --- the states -----------------------------------------------------------------------------------------------
def extreme_statistics_eval():
    torch.manual_seed(0)
    return _extreme_statistics(small_net()).eval(), _x()


def extreme_statistics_train():
    torch.manual_seed(0)
    return _extreme_statistics(small_net()), _x()


def extreme_statistics_cumulative():
    """momentum=None (a cumulative average) after 300000 batches, in train mode: each update moves by 1/300001."""
    torch.manual_seed(0)
    model = _extreme_statistics(small_net())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    return model, _x()


def trained_handed_over_in_eval():
    torch.manual_seed(0)
    return _fit(small_net(), steps=300, lr=0.05).eval(), _x()


def trained_seed_cnn_in_eval():
    torch.manual_seed(0)
    model = seed_cnn()
    gen = _gen(3)
    data, labels = torch.randn(128, 1, 28, 28, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(200):
        idx = torch.randint(0, 128, (16,), generator=gen)
        loss = F.cross_entropy(model(data[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), _x(shape=(1, 28, 28))


def after_high_lr_sgd():
    torch.manual_seed(0)
    return _fit(small_net(), steps=5, lr=2.0), _x()


def held_in_bfloat16():
    torch.manual_seed(0)
    return small_net().to(torch.bfloat16), _x().to(torch.bfloat16)


def held_in_float16():
    torch.manual_seed(0)
    model = small_net().to(torch.float16)
    x = _x().to(torch.float16)
    try:
        with torch.no_grad():
            model(x)
            model.train()(x).float().sum()
    except RuntimeError as exc:  # pragma: no cover - a CPU build without float16 kernels
        pytest.skip(f"this CPU does not run the model in float16: {exc}")
    return model, x


def channels_last_model():
    torch.manual_seed(0)
    return small_net().to(memory_format=torch.channels_last), _x().contiguous(memory_format=torch.channels_last)


def frozen_feature_extractor():
    torch.manual_seed(0)
    model = _fit(small_net(), steps=50, lr=0.05).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, _x()


class NormEvalNet(nn.Module):
    """mmdetection's norm_eval=True: train() keeps every BN layer in eval mode, by design."""

    def __init__(self):
        super().__init__()
        self.body = small_net()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x):
        return self.body(x)


def norm_eval_in_train_mode():
    torch.manual_seed(0)
    return NormEvalNet().train(), _x()


def norm_eval_frozen_stem():
    """norm_eval plus mmdetection's frozen_stages: the first conv-BN's parameters do not require grad."""
    torch.manual_seed(0)
    model = _fit(NormEvalNet(), steps=20, lr=0.05).train()
    for p in model.body[:2].parameters():
        p.requires_grad_(False)
    return model, _x()


# --- the wrappers ---------------------------------------------------------------------------------------------
def fx_graph_module():
    torch.manual_seed(0)
    return torch.fx.symbolic_trace(small_net()), _x()


def data_parallel():
    torch.manual_seed(0)
    return nn.DataParallel(small_net()), _x()


def compiled():
    torch.manual_seed(0)
    return torch.compile(small_net()), _x()


def torchscript():
    torch.manual_seed(0)
    return torch.jit.script(small_net()), _x()


def _normed(parametrize) -> nn.Module:
    torch.manual_seed(0)
    model = small_net()
    model[0] = parametrize(model[0])
    model[3] = parametrize(model[3])
    _fit(model, steps=20, lr=0.05)  # spectral_norm's power iteration has run: u, v are a trained state
    return model


def weight_norm_convs():
    return _normed(nn.utils.parametrizations.weight_norm), _x()


def spectral_norm_convs():
    return _normed(nn.utils.parametrizations.spectral_norm), _x()


def spectral_norm_convs_eval():
    return _normed(nn.utils.parametrizations.spectral_norm).eval(), _x()


STATES = [extreme_statistics_eval, extreme_statistics_train, extreme_statistics_cumulative,
          trained_handed_over_in_eval, trained_seed_cnn_in_eval, after_high_lr_sgd, held_in_bfloat16,
          held_in_float16, channels_last_model, frozen_feature_extractor, norm_eval_in_train_mode,
          norm_eval_frozen_stem, fx_graph_module, data_parallel, weight_norm_convs, spectral_norm_convs,
          spectral_norm_convs_eval]


def _bits(t: torch.Tensor) -> tuple:
    return t.dtype, tuple(t.shape), t.device, t.detach().contiguous().view(-1).view(torch.uint8).clone()


def _fingerprint(model: nn.Module) -> tuple[dict, dict, dict]:
    """Everything the user's model must keep: state_dict tensors bit for bit, training flags, requires_grad."""
    return ({k: _bits(v) for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)},
            {n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def _unchanged(before, model) -> list[str]:
    state, training, grads = _fingerprint(model)
    out = [f"state_dict[{k!r}] changed" for k in sorted(before[0].keys() | state.keys())
           if k not in before[0] or k not in state or before[0][k][:3] != state[k][:3]
           or not torch.equal(before[0][k][3], state[k][3])]
    out += [f"training of {k!r}" for k in before[1].keys() | training.keys() if before[1].get(k) != training.get(k)]
    out += [f"requires_grad of {k!r}" for k in before[2].keys() | grads.keys() if before[2].get(k) != grads.get(k)]
    return out


def _assert_passes(model: nn.Module, x, name: str) -> None:
    before = _fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own deprecation chatter (fx, jit)
        report = check_model(model, x, name=name)
    failures = "\n".join(f"{o.name}: {o.message}" for o in report.failures)
    assert not report.failures, f"{report.summary()}\n{failures}"
    assert report.counts()["passed"] > 0, report.summary()
    assert any(o.layer is not None and o.status == "passed" for o in report.outcomes), report.summary()
    assert _unchanged(before, model) == []


@pytest.mark.parametrize("build", STATES, ids=lambda f: f.__name__)
def test_a_correct_model_in_a_real_state_passes_and_is_left_as_it_was(build, one_thread):
    model, x = build()
    _assert_passes(model, x, build.__name__)


def traced():
    torch.manual_seed(0)
    return torch.jit.trace(small_net().eval(), _x()), _x()


class HoldsAScriptedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        net = small_net()
        self.stem = torch.jit.script(net[:3])
        self.rest = net[3:]

    def forward(self, x):
        return self.rest(self.stem(x))


def holds_a_scripted_block():
    torch.manual_seed(0)
    return HoldsAScriptedBlock(), _x()


@pytest.mark.parametrize("build", [data_parallel, compiled], ids=lambda f: f.__name__)
def test_a_wrapper_is_checked_through_under_the_wrapped_model_s_names(build, one_thread):
    """nn.DataParallel's .module and torch.compile's _orig_mod are what bncheck checks, every item under the
    names the user's model has (`1`, not `module.1` or `_orig_mod.1`), and the wrapper is left as it was."""
    model, x = build()
    _assert_passes(model, x, build.__name__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = check_model(model, x, name=build.__name__)
    assert {o.layer for o in report.outcomes if o.layer is not None} == {"1", "4", "9"}, report.summary()


@pytest.mark.parametrize("build", [torchscript, traced, holds_a_scripted_block], ids=lambda f: f.__name__)
def test_torchscript_is_one_usage_error_saying_why_and_what_to_pass(build, one_thread):
    """TorchScript runs its BN layers as compiled code, which cannot be hooked (register_forward_hook raises on a
    ScriptModule), run alone or copied as an nn.Module: one line, no traceback of torch's, naming what to pass."""
    model, x = build()
    before = _fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(BNCheckUsageError) as info:
            check_model(model, x, name=build.__name__)
    message = str(info.value)
    assert "\n" not in message and "TorchScript" in message and "pass the nn.Module" in message, message
    assert _unchanged(before, model) == []


# --- the same through the plugin ------------------------------------------------------------------------------
SPECS = """
import torch
from torch import nn


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 4))


def x():
    return torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def parallel():
    return nn.DataParallel(small_net()), x()


def weight_normed():
    model = small_net()
    model[0] = nn.utils.parametrizations.weight_norm(model[0])
    return model, x()


def half():
    return small_net().to(torch.bfloat16), x().to(torch.bfloat16)


def scripted():
    return torch.jit.script(small_net()), x()
"""


@pytest.mark.parametrize("factory", ["parallel", "weight_normed", "half"])
def test_the_plugin_passes_every_item_of_a_real_state(pytester, _lazy_torch_imports, factory):
    from plugin_runs import outcomes_by_id

    pytester.makepyfile(realstates=SPECS)
    pytester.syspathinsert()
    result = pytester.runpytest(f"--bncheck-model=realstates:{factory}", "-p", "no:warnings")
    outcomes = outcomes_by_id(result)
    assert outcomes and "failed" not in outcomes.values(), result.stdout.str()[-4000:]
    assert f"bncheck[realstates:{factory}]::batch_stats[1]" in outcomes, sorted(outcomes)[:5]


def test_the_plugin_refuses_torchscript_in_one_line(pytester, _lazy_torch_imports):
    from plugin_runs import assert_usage_error

    pytester.makepyfile(realstates=SPECS)
    pytester.syspathinsert()
    result = pytester.runpytest("--bncheck-model=realstates:scripted", "-p", "no:warnings")
    assert_usage_error(result, "realstates:scripted", "TorchScript", "pass the nn.Module")


def test_a_check_called_on_torchscript_directly_is_the_same_one_line_error(one_thread):
    from bncheck import assert_model_fusion

    model, x = torchscript()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(BNCheckUsageError, match="TorchScript .* pass the nn.Module"):
            assert_model_fusion(model, x)
