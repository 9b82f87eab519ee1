"""Training with and without BN: data sets, ablations, fitting, convergence assertions, sweeps and population
statistics. Imports bncheck.core only."""
