"""`torchrun ... -m bncheck syncbn SPEC` (bncheck.run.cluster): every rank checks its own batch through each
synchronized BN layer against one BN over the whole gathered batch; rank 0 reports; every rank exits alike.
Run here with torchrun --standalone --nproc-per-node=2 on gloo and the CPU; nccl and CUDA need a GPU machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from planted.sync import SPEC_MODULE

from bncheck.run.cluster import TORCHRUN


def _torchrun(tmp_path, spec: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "clustermodels.py").write_text(SPEC_MODULE)
    tests = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), tests, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "bncheck",
           "syncbn", spec, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_a_correct_from_scratch_syncbn_passes_on_every_rank(tmp_path):
    done = _torchrun(tmp_path, "clustermodels:scratch")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "across 2 ranks on cpu (gloo)" in done.stdout and "PASS  syncbn[1]" in done.stdout
    assert done.stdout.count("all checks passed") == 1  # rank 0 reports, the other rank prints nothing


def test_a_syncbn_averaging_per_rank_variances_fails_with_the_ranks_numbers(tmp_path):
    done = _torchrun(tmp_path, "clustermodels:averaged")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "FAIL  syncbn[1]" in done.stdout and "rank 0 of 2" in done.stdout
    assert "variances were averaged" in done.stdout and "expected" in done.stdout


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="on 2 GPUs torch's SyncBatchNorm runs: a real pass")
def test_the_seed_cnn_converted_to_torchs_syncbn_runs_and_says_why_it_skips_on_the_cpu(tmp_path):
    done = _torchrun(tmp_path, "bncheck.examples:seed_cnn")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "torch's BN layers converted to nn.SyncBatchNorm" in done.stdout
    assert done.stdout.count("rejects CPU input under a process group") == 2  # BatchNorm2d and BatchNorm1d
    assert "no layer could be checked here" in done.stdout


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (nccl, one process per GPU)")
def test_the_seed_cnn_on_two_gpus_passes_with_nccl(tmp_path):
    done = _torchrun(tmp_path, "bncheck.examples:seed_cnn")
    assert done.returncode == 0 and "(nccl)" in done.stdout and "2 passed" in done.stdout, done.stdout


def test_outside_torchrun_it_is_one_line_saying_how_to_run_it():
    done = subprocess.run([sys.executable, "-m", "bncheck", "syncbn", "bncheck.examples:seed_cnn"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})
    assert done.returncode == 2 and done.stderr.strip() == f"error: the syncbn command runs inside a torchrun job, " \
                                                           f"one process per rank: {TORCHRUN}"
