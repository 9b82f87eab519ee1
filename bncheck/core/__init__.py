"""The core every check stands on: errors, the float64 oracle, tolerances and comparison, probe inputs, model
copies and state snapshots, BN discovery, input capture, torch's own reference, and loading a model from a spec.
Imports nothing else of bncheck."""
