"""benchmarks/gpu_check.sh on a machine without a GPU: the dry run checks imports and every step's arguments,
and a real run refuses in one line instead of measuring nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="gpu_check.sh needs bash and coreutils' timeout")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_checks_imports_and_arguments_and_writes_one_report(tmp_path):
    done = run("--dry-run", "--out", str(tmp_path))
    report = (tmp_path / "gpu_check.md").read_text()
    assert done.returncode == 0, report
    assert report.startswith("# GPU check (DRY RUN")
    for step in ("## Machine", "## tests/kernels (collected only)", "## attention.py arguments",
                 "## vs_alternatives.py arguments (float16)", "## vs_alternatives.py arguments (bfloat16)",
                 "## gpu_serving_check.py arguments"):
        assert step in report
    assert report.count("exit status 0") == 6 and "every step exited 0" in report
    assert "tests collected" in report and "arguments ok" in report


def test_bad_arguments_are_one_line():
    done = run("--budget-s", "soon", timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--budget-s needs whole seconds" in done.stderr


def test_a_real_run_without_cuda_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a real run would measure (run the script itself)")
    done = run("--out", str(tmp_path / "r.md"), "--budget-s", "60")
    report = (tmp_path / "r.md").read_text()
    assert done.returncode != 0
    assert "torch sees no CUDA device" in report
