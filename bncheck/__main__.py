"""`python -m bncheck check|bench SPEC ...`: the command line (bncheck.frontends.cli)."""

import sys

from bncheck.frontends.cli import main

if __name__ == "__main__":
    sys.exit(main())
