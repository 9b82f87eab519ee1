"""The seed experiments of bncheck, as runnable code: `python -m reference --help`.

- networks.py: the deeplizard Fashion-MNIST CNN with and without BN, and the second tutorial's MLP (BN before or
  after the activation, bias on or off, dropout on or off).
- runs.py: a small run manager: every combination of data × network × setting × seed (like the tutorial's
  RunBuilder), trained epoch by epoch, written as one CSV table.
- assertions.py: the convergence assertions' verdicts over 10 disjoint seed sets, and the learning-rate sweep.
- plot.py: the curves as one PNG (matplotlib, Agg).
"""
