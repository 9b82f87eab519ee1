"""The oracle agrees with torch's own BatchNorm in float64, for every rank and option, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from bncheck.core import oracle

SHAPES = [(5, 3), (4, 3, 7), (3, 2, 5, 4), (2, 3, 2, 3, 4), (2, 4, 1, 1)]


def _rand(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_train_and_eval_forward_match_torch(shape, affine):
    x = _rand(shape)
    c = shape[1]
    w, b = (_rand((c,), 1), _rand((c,), 2)) if affine else (None, None)
    rm, rv = _rand((c,), 3), _rand((c,), 4).abs() + 0.5
    eps = 1e-3
    torch.testing.assert_close(oracle.train_forward(x, eps, w, b), F.batch_norm(x, None, None, w, b, True, 0.1, eps))
    torch.testing.assert_close(oracle.eval_forward(x, rm, rv, eps, w, b),
                               F.batch_norm(x, rm, rv, w, b, False, 0.1, eps))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_running_update_matches_torch_over_several_batches(shape, momentum):
    bn = torch.nn.BatchNorm1d(shape[1], momentum=momentum, dtype=torch.float64) if len(shape) <= 3 else \
        getattr(torch.nn, f"BatchNorm{len(shape) - 2}d")(shape[1], momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        bn.running_mean.copy_(_rand((shape[1],), 5))
        bn.running_var.fill_(2.0)
        bn.num_batches_tracked.fill_(3)
    state = oracle.RunningStats.of(bn)
    for step in range(3):
        x = _rand(shape, 10 + step)
        bn(x)
        state = oracle.update_running(state, x, momentum)
        torch.testing.assert_close(state.mean, bn.running_mean)
        torch.testing.assert_close(state.var, bn.running_var)
        assert state.num_batches_tracked == int(bn.num_batches_tracked)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("train", [True, False])
def test_backward_matches_autograd(shape, train):
    x = _rand(shape).requires_grad_(True)
    c = shape[1]
    w, b = _rand((c,), 1).requires_grad_(True), _rand((c,), 2).requires_grad_(True)
    rm, rv = _rand((c,), 3), _rand((c,), 4).abs() + 0.5
    dy = _rand(shape, 9)
    F.batch_norm(x, None if train else rm, None if train else rv, w, b, train, 0.1, 1e-5).backward(dy)
    got = oracle.train_backward(x, dy, 1e-5, w) if train else oracle.eval_backward(x, dy, rm, rv, 1e-5, w)
    torch.testing.assert_close(got.x, x.grad)
    torch.testing.assert_close(got.weight, w.grad)
    torch.testing.assert_close(got.bias, b.grad)


def test_batch_stats_are_biased_and_count_values_per_channel():
    x = torch.tensor([[[1.0, 3.0]], [[5.0, 7.0]]])  # (N=2, C=1, L=2): n = 4
    stats = oracle.batch_stats(x)
    assert stats.n == 4
    assert stats.mean.item() == 4.0
    assert stats.var.item() == 5.0  # biased: 20/4
    assert stats.unbiased_var.item() == pytest.approx(20 / 3)


def test_momentum_none_is_cumulative_average():
    state = oracle.RunningStats(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), 0)
    means = []
    for k in range(4):
        x = torch.full((2, 1), float(k), dtype=torch.float64) + torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
        means.append(float(k))
        state = oracle.update_running(state, x, None)
    assert state.mean.item() == pytest.approx(sum(means) / len(means))
