"""Snapshots see every change a check could make; clone works on uninitialized Lazy modules; materialized runs
a copy once only when it is lazy; private_rng seeds without touching the caller's generators."""

import pytest
import torch
from torch import nn

from bncheck.core.state import Snapshot, clone, materialized, private_rng


def _model():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.LazyBatchNorm1d())


def test_unchanged_model_has_no_differences():
    model = _model()
    assert Snapshot.of(model).differences(model) == []


def test_buffer_flag_and_requires_grad_changes_are_all_seen():
    model = _model()
    snap = Snapshot.of(model)
    model[1].running_mean.add_(1)
    model[1].eval()
    model[0].weight.requires_grad_(False)
    found = " | ".join(snap.differences(model))
    assert "state_dict['1.running_mean'] changed" in found
    assert "training of '1': True -> False" in found
    assert "requires_grad of '0.weight': True -> False" in found


def test_materializing_a_lazy_module_is_a_change():
    model = _model()
    snap = Snapshot.of(model)
    model[2](torch.randn(4, 3))
    assert any("2.running_mean" in d for d in snap.differences(model))


def test_nan_left_in_place_is_no_change():
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(float("nan"))
    assert Snapshot.of(bn).differences(bn) == []


def test_clone_of_an_uninitialized_lazy_model_is_independent():
    model = _model()
    twin = clone(model)
    twin[2](torch.randn(4, 3))
    assert twin[2].running_mean.shape == (3,)
    assert Snapshot.of(model).differences(model) == []
    assert isinstance(model[2].weight, nn.parameter.UninitializedParameter)


def test_checks_run_on_one_cpu_thread_and_restore_the_callers_count():
    from bncheck import assert_batch_stats
    from bncheck.core.errors import BNCheckError
    from bncheck.core.threads import one_thread

    seen = []

    class Recording(nn.BatchNorm2d):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return super().forward(x) * 2  # wrong, so the check fails and must still restore

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        try:
            assert_batch_stats(Recording(3), torch.randn(4, 3, 2, 2))
        except BNCheckError:
            pass
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, *xs):
        self.calls.append((self.training, torch.is_grad_enabled(), len(xs)))
        return self.inner(xs[0])


def test_materialized_runs_one_eval_forward_without_grad_only_when_lazy():
    lazy = _Counting(nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d()))
    lazy.inner[1].eval()  # a flag of its own, which must survive
    assert materialized(lazy, (torch.randn(3, 5), torch.randn(1))) is lazy
    assert lazy.calls == [(False, False, 2)]
    assert lazy.training and not lazy.inner[1].training and lazy.inner[0].training
    assert lazy.inner[0].weight.shape == (4, 5) and lazy.inner[1].running_mean.shape == (4,)
    assert torch.equal(lazy.inner[1].running_mean, torch.zeros(4))  # eval mode: no statistic moved
    plain = _Counting(nn.BatchNorm1d(4))
    assert materialized(plain, torch.randn(3, 4)) is plain and plain.calls == []


def test_private_rng_seeds_the_cpu_generator_only_and_restores_it(monkeypatch):
    seeded = []
    for name in ("manual_seed", "manual_seed_all", "seed", "seed_all"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: seeded.append(name))
    state = torch.random.get_rng_state()
    with private_rng(7):
        a = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), state)
    with private_rng(7, "cpu"):
        b = torch.rand(3)
    with private_rng():  # no seed: only the restore
        torch.rand(3)
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)
    assert seeded == []


def test_private_rng_restores_after_an_error():
    state = torch.random.get_rng_state()
    with pytest.raises(RuntimeError), private_rng(1):
        torch.rand(3)
        raise RuntimeError("inside")
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.cuda
def test_private_rng_on_a_gpu_seeds_and_restores_that_device_only():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda", 0)
    cpu, gpu = torch.random.get_rng_state(), torch.cuda.get_rng_state(device)
    with private_rng(3, device):
        a = torch.rand(3, device=device)
    with private_rng(3, device):
        b = torch.rand(3, device=device)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(device), gpu)
