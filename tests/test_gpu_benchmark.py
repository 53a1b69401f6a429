"""benchmarks/gpu.py on a machine without a GPU: one error line without --tiny; with --tiny its parts run at toy
sizes and write their figures (the peak and the FlexAttention/SDPA check here, the cheap ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script's CPU paths")


def run_gpu_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_without_a_gpu_it_says_so_in_one_line():
    done = run_gpu_script()
    assert done.returncode != 0
    assert done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1


def test_tiny_runs_and_writes_each_parts_figures(tmp_path):
    out = tmp_path / "gpu.json"
    done = run_gpu_script("--tiny", "--only", "1,2", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["1 matmul peak FLOP/s"]["float32"] > 0
    check = report["2 flex against sdpa"]
    assert "error" not in check, check
    assert check["equal within tolerance"] is True
    assert check["bf16 eager fwd+bwd tokens/s, sdpa"] > 0
    assert not list(tmp_path.glob("*.tmp"))
