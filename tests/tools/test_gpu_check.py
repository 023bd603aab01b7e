"""tools/device_check.sh: step selection, per-step logs under $OUT, failures counted.

The real run needs a GPU; here the build step meets a CPU-only torch, which must be reported as a
failed step (with setup.py's reason in its log) without stopping the script or hiding the failure.
"""

import os
import subprocess
import sys

import pytest
import torch

from tests.tools.conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "tools", "device_check.sh")


def _run(out_dir, *steps, **env_vars):
    env = dict(os.environ, OUT=str(out_dir), PYTHON=sys.executable, **env_vars)
    return subprocess.run(["bash", SCRIPT, *steps], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_unknown_step_is_rejected(tmp_path):
    result = _run(tmp_path, "build", "benchmark")
    assert result.returncode == 2
    assert "unknown step 'benchmark'" in result.stderr
    assert "env build tests bench train train_torch features" in result.stderr
    assert not (tmp_path / "summary.txt").exists()


def test_failed_step_is_logged_and_counted(tmp_path):
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA, so the extension may build; the check needs a CPU torch")
    result = _run(tmp_path, "build")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert len(summary) == 1 and summary[0].split()[:3] == ["build", "FAILED", "(rc"]
    log = (tmp_path / "build.log").read_text()
    assert "skipping CUDA extension (this torch build has no CUDA)" in log
    assert "No module named 'megatron_ponder._C'" in log
    assert "== summary" in result.stdout


def test_steps_past_the_time_budget_are_skipped_and_counted(tmp_path):
    result = _run(tmp_path, "build", "tests", DEVICE_CHECK_BUDGET="5")
    assert result.returncode == 1
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[:3] for line in summary] == [["build", "SKIPPED", "(budget)"],
                                                      ["tests", "SKIPPED", "(budget)"]]
    assert not (tmp_path / "build.log").exists()
