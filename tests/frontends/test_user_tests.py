"""bncheck's assertions inside a user's own pytest tests: a failure shows the user's line and bncheck's message,
not bncheck's internals."""

USER_TEST = '''
import torch
from torch import nn
from bncheck import assert_batch_stats


class EpsOutside(nn.BatchNorm2d):
    def forward(self, x):
        mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) / (var.sqrt() + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


def test_my_bn():
    assert_batch_stats(EpsOutside(4), torch.randn(8, 4, 5, 5), name="my_bn")
'''


def test_a_failing_assertion_shows_the_users_line_and_the_message_only(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    section = out[out.index("___ test_my_bn ___"):out.index("short test summary")]
    assert "bncheck/" not in section, section  # no frame of bncheck's own
    assert "assert_batch_stats(EpsOutside(4)" in section and "eps outside the sqrt" in section
    assert len(section.splitlines()) <= 20, section


def test_every_public_assertion_hides_its_frames():
    import bncheck

    names = [name for name in bncheck.__all__ if name.startswith("assert_")]
    assert len(names) > 30
    unwrapped = [name for name in names if not hasattr(getattr(bncheck, name), "__wrapped__")]
    assert unwrapped == [], "decorate them with bncheck.core.errors.assertion_helper"
