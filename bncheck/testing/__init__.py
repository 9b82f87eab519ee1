"""For users' own tests: hypothesis strategies and example models. Imports bncheck.core and bncheck.checks."""
