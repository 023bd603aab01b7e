"""tools/fault_injection.py and its faults (tools/faults/): a few cheap faults through the real
command line (the whole --quick run is the slow test), and the verdicts on runs that did not
survive."""

import json
import os
import subprocess
import sys

import pytest

from tools.faults.harness import Outcome, Run, clean_stop

from .conftest import TOOLS_DIR, load_tool

TOOL = os.path.join(TOOLS_DIR, "fault_injection.py")
CHEAP = ["preprocess-malformed-json", "layout-tp-heads", "data-bin-idx-mismatch"]


@pytest.fixture(scope="module")
def tool():
    return load_tool("fault_injection")


def _run(*args, timeout=1800):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cheap_faults_are_injected_and_survived(tmp_path):
    result = _run("--faults", *CHEAP, "--json", str(tmp_path / "faults.json"))
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[-1] == "faults: 3 injected, 3 survived, 0 lost"
    assert "| fault | tried | survived | data lost |" in lines
    rows = [line for line in lines if line.startswith("| ") and "fault | tried" not in line]
    assert [row.split(" | ")[0][2:] for row in rows] == CHEAP
    assert all(row.endswith("| yes | no |") for row in rows), rows
    report = json.loads((tmp_path / "faults.json").read_text())
    assert report["summary"] == lines[-1]
    outcomes = {o["fault"]: o for o in report["outcomes"]}
    # The verdicts rest on the product's own one-line errors:
    assert "do not belong together" in outcomes["data-bin-idx-mismatch"]["detail"]
    assert "--num-attention-heads 4 is not divisible" in outcomes["layout-tp-heads"]["detail"]
    assert "input.jsonl:2: malformed JSON" in outcomes["preprocess-malformed-json"]["detail"]


def test_unknown_fault_names_are_refused():
    result = _run("--faults", "no-such-fault", timeout=300)
    assert result.returncode == 2
    assert "error: unknown faults ['no-such-fault']" in result.stderr


def test_a_traceback_or_a_second_error_line_is_not_a_clean_stop():
    traceback = Run(1, "", "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n")
    assert clean_stop(traceback, "x") == (False, "a traceback: KeyError: 'x'")
    two_lines = Run(1, "", "error: first\nerror: second\n")
    assert not clean_stop(two_lines, "first")[0]
    unnamed = Run(1, "", "error: something else\n")
    assert "does not name" in clean_stop(unnamed, "the file")[1]
    assert not clean_stop(Run(0, "", ""), "x")[0]  # a fault that went unnoticed
    assert clean_stop(Run(1, "", "warning: w\nerror: the file is bad\n"),
                      "the file") == (True, "error: the file is bad")


def test_outcomes_that_did_not_survive_are_counted_and_fail_the_exit_status(tool):
    outcomes = [Outcome("a", "t", True, False, ""),
                Outcome("b", "t", False, True, "half a checkpoint"),
                Outcome("c", "t", True, False, "", injected=False)]
    assert tool.summary_line(outcomes) == "faults: 2 injected, 1 survived, 1 lost"
    table = tool.format_table(outcomes).splitlines()
    assert table[3] == "| b | t | NO | YES |" and table[4] == "| c | t | not injected | no |"


@pytest.mark.slow
def test_quick_run_survives_every_fault(tmp_path):
    result = _run("--quick", "--json", str(tmp_path / "quick.json"), timeout=3600)
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    injected = int(last.split()[1])
    assert injected >= 20
    assert last == f"faults: {injected} injected, {injected} survived, 0 lost"
