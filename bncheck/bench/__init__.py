"""Throughput benchmarks: what is timed (cases), how (synchronized blocks), against which roofline (a copy).
Imports bncheck.core only."""
