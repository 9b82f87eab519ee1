"""The documented path bncheck.strategies: the module bncheck.testing.strategies itself (patches reach it)."""

import sys

from bncheck.testing import strategies

sys.modules[__name__] = strategies
