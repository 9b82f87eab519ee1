"""Synchronized BN across real processes: the same statistics as one BN over the whole batch. Imports bncheck.core
only."""

from bncheck.syncbn.check import assert_syncbn_matches

__all__ = ["assert_syncbn_matches"]
