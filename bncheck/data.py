"""The documented path bncheck.data: the module bncheck.training.data itself (patches reach it)."""

import sys

from bncheck.training import data

sys.modules[__name__] = data
