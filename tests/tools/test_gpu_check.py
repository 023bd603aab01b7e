"""tools/gpu_check.sh: options and step selection, per-step logs in the output directory, failures
counted.

The real run needs a GPU; here the build step meets a CPU-only torch, which must be reported as a
failed step (with setup.py's reason in its log) without stopping the script or hiding the failure.
"""

import os
import subprocess
import sys

import pytest
import torch

from tests.tools.conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "tools", "gpu_check.sh")


def _run(*args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", SCRIPT, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["build", "benchmark"], "unknown step 'benchmark'"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--budget", "soon"], "--budget must be a whole number of seconds, got 'soon'"),
])
def test_bad_arguments_are_rejected_before_anything_runs(tmp_path, args, message):
    result = _run("--out", tmp_path / "out", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_wheels_folder_without_wheels_is_rejected(tmp_path):
    (tmp_path / "wheels").mkdir()
    result = _run("--out", tmp_path / "out", "--wheels", tmp_path / "wheels", "env")
    assert result.returncode == 2
    assert "no .whl files there" in result.stderr


def test_failed_step_is_logged_and_counted(tmp_path):
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA, so the extension may build; the check needs a CPU torch")
    result = _run("--out", tmp_path, "build")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert len(summary) == 1 and summary[0].split()[:3] == ["build", "FAILED", "(rc"]
    log = (tmp_path / "build.log").read_text()
    assert "skipping CUDA extension (this torch build has no CUDA)" in log
    assert "No module named 'megatron_ponder._C'" in log
    assert "== summary" in result.stdout


def test_steps_past_the_time_budget_are_skipped_and_counted(tmp_path):
    result = _run("--out", tmp_path, "--budget", "5", "build", "tests")
    assert result.returncode == 1
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[:3] for line in summary] == [["build", "SKIPPED", "(budget)"],
                                                      ["tests", "SKIPPED", "(budget)"]]
    assert not (tmp_path / "build.log").exists()


def test_dry_run_rehearses_steps_on_cpu_and_gathers_one_json(tmp_path):
    """--dry-run: each step's CPU-runnable part (here the environment and the fast-vs-local
    comparison on a tiny model), every result in gpu_check.json."""
    import json

    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", SCRIPT, "--dry-run", "--out", str(tmp_path), "env",
                             "fastpath"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run: each step's CPU-runnable part" in result.stdout
    gathered = json.loads((tmp_path / "gpu_check.json").read_text())
    assert gathered["dry_run"] is True
    assert [(step["step"], step["status"]) for step in gathered["steps"]] == \
        [("env", "ok"), ("fastpath", "ok")]
    fastpath = "\n".join(gathered["fastpath"])
    # Both runs name their path (on CPU: the same one), and their losses agree.
    assert fastpath.count("execution (cpu): linear: local") == 2
    assert "agree within rtol 0.03 over 3 shared iterations" in fastpath
