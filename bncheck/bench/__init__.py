"""Throughput benchmarks: what is timed (cases), how (synchronized blocks), against which roofline (a copy).
Imports bncheck.core only; importing the package itself imports nothing (no torch).

- workloads: the modes and memory formats, and the function a case times (a private copy, a fresh input);
- cases: `benchmark_cases`, the BenchCases of a model and its BN layers;
- timing: the device synchronize, the block clock, and a case built and warmed up under restored settings;
- roofline: the bytes a BN call must move and the copy bandwidth they are set against;
- results: `measure`, a case's Result (time per call, samples/s, bytes/s, fraction of copy).

Left as found: the user's model (only clones run), `torch.backends.cudnn.benchmark`, the CPU/CUDA RNG, torch's
thread count, and device memory (every tensor a case allocates is released when its measurement ends).
Without pytest: `python -m bncheck bench SPEC --input-shape 3,224,224` (bncheck.frontends.bench_cli)."""
