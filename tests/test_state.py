"""Snapshots see every change a check could make; clone works on uninitialized Lazy modules."""

import torch
from torch import nn

from bncheck.state import Snapshot, clone


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
    from bncheck.errors import BNCheckError
    from bncheck.threads import one_thread

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
