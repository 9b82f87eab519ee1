"""bncheck's nox sessions: `nox` runs lint and tests; bench, zoo, gpu and reference run when named (`nox -s bench`).

Each session installs what it needs into its own venv under .nox/ (`nox -R` reuses it without reinstalling);
whatever installs torch passes `-c constraints-ci.txt`, so the pinned torch and torchvision come from local files.
Arguments after `--` go to the session's command, e.g. `nox -s tests -- tests/syncbn/test_syncbn.py -x`.
"""

from pathlib import Path

import nox

nox.needs_version = ">=2024.3"
nox.options.envdir = ".nox"
nox.options.error_on_missing_interpreters = True  # a session without Python 3.11 fails, it is never "skipped"

PYTHON = "3.11"  # the constraints' torch wheels are built for CPython 3.11
CONSTRAINTS = ("-c", "constraints-ci.txt")
BENCH_DIR = Path(".benchmarks") / "nox"


def _install(session: nox.Session, extras: str) -> None:
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, under pytest-xdist with 2 workers (or the pytest arguments after --)."""
    _install(session, "test")
    session.run("pytest", *(session.posargs or ["-n", "2"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check with the rules in pyproject.toml (arguments after -- replace the default `.`)."""
    session.install("ruff")
    session.run("ruff", "--version")
    session.run("ruff", "check", *(session.posargs or ["."]))


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """The benchmarks, serially, as JSON in .benchmarks/nox/ (or the folder after --).

    tests/run/test_performance.py through pytest-benchmark (performance.json), every timing comparison and duration
    bound of the suite (-m timing: timing.json) and `python -m bncheck bench` on the seed CNN (seed_cnn.json)."""
    _install(session, "test")
    out = Path(session.posargs[0]) if session.posargs else BENCH_DIR
    out.mkdir(parents=True, exist_ok=True)
    # pytest-benchmark times nothing under xdist
    # every timing comparison and duration bound (-m timing), with pytest-benchmark enabled (it times nothing
    # under xdist), so each budget is asserted here
    session.run("pytest", "-p", "no:xdist", "-m", "timing or slow", "tests/run/test_performance.py",
                f"--benchmark-json={out / 'performance.json'}", "--benchmark-columns=min,max,mean,rounds")
    session.run("pytest", "-p", "no:xdist", "-m", "timing", "tests/bench/test_bench.py",
                "tests/training/test_convergence.py",
                f"--benchmark-json={out / 'timing.json'}", "--benchmark-columns=min,max,mean,rounds")
    session.run("python", "-m", "bncheck", "bench", "bncheck.examples:seed_cnn", "--json", str(out / "seed_cnn.json"))
    session.log(f"benchmark JSON: {out / 'performance.json'}, {out / 'seed_cnn.json'}")


@nox.session(python=PYTHON, default=False)
def zoo(session: nox.Session) -> None:
    """Every bncheck item on every BN model of the zoo's libraries (pytest -m zoo), then docs/ZOO.md from the
    results. After --: `--quick` runs catalog.quick_ids() (each library's cheap models, minutes) and writes
    .zoo/ZOO-quick.md instead; `--split=K/M` runs the K-th of M interleaved parts of the sorted model list (part 1
    clears .zoo/, each part renders docs/ZOO.md from every result so far: after part M it has them all); the
    other arguments go to pytest, e.g. -k resnet."""
    import shutil
    import time

    _install(session, "test,zoo")
    args = list(session.posargs)
    quick = "--quick" in args
    split = next((a.split("=", 1)[1] for a in args if a.startswith("--split=")), "")
    args = [a for a in args if a != "--quick" and not a.startswith("--split=")]
    # ultralytics: no DNS probe at import, its settings file under .zoo/ rather than ~/.config
    env = {"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str((Path(".zoo") / "ultralytics").absolute())}
    results = Path(".zoo") / "quick" if quick else Path(".zoo")
    if split:
        env["BNCHECK_ZOO_SPLIT"] = split
    if quick:
        env["BNCHECK_ZOO_QUICK"] = "1"
    if not split or split.startswith("1/"):
        shutil.rmtree(results, ignore_errors=True)
    env["BNCHECK_ZOO_RESULTS"] = str(results)
    page = str(Path(".zoo") / "ZOO-quick.md") if quick else "docs/ZOO.md"
    start = time.perf_counter()
    try:
        session.run("pytest", "-m", "zoo", "tests/zoo", "-n", "2", "-q", "-rs", *args, env=env)
    finally:
        session.run("python", "-m", "tests.zoo.report", str(results), page, str(round(time.perf_counter() - start)))
    session.log(f"{page} written")


@nox.session(python=PYTHON, default=False)
def gpu(session: nox.Session) -> None:
    """The CUDA-marked tests (pytest -m cuda), on a machine with a CUDA GPU; says so and skips without one."""
    _install(session, "test")
    count = session.run("python", "-c", "import torch; print(torch.cuda.device_count() if "
                        "torch.cuda.is_available() else 0)", silent=True)
    gpus = int(str(count).strip().splitlines()[-1])
    if gpus == 0:
        session.skip("no CUDA GPU on this machine: the gpu session runs the -m cuda tests where there is one")
    session.log(f"{gpus} CUDA GPU(s)")
    session.run("pytest", "-m", "cuda", "-rs", *session.posargs)


@nox.session(python=PYTHON, default=False)
def reference(session: nox.Session) -> None:
    """Regenerates the reference results: python -m reference (arguments after -- are passed on)."""
    _install(session, "reference")
    session.run("python", "-m", "reference", *session.posargs)
