"""The documented path bncheck.examples: the module bncheck.testing.examples itself (patches reach it)."""

import sys

from bncheck.testing import examples

sys.modules[__name__] = examples
