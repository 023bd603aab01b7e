"""An interrupted tools/preprocess_data.py leaves nothing under the final output names.

The input is a named pipe that the test keeps open: the tool streams and writes what it has
received, then waits for more, so the signal is certain to land mid-run (a big regular file
would make that a race against the machine's speed).
"""

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import time

import psutil

from .conftest import TOOLS_DIR

TOOL = os.path.join(TOOLS_DIR, "preprocess_data.py")
STARTUP_TIMEOUT = 120


def _start_mid_run(tmp_path, workers):
    """Start the tool on a pipe, feed it 20,000 documents and return once it has written
    tokens, with the pipe still open."""
    fifo = tmp_path / "input.jsonl"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, TOOL, "--input", str(fifo), "--output-prefix", "out",
         "--workers", str(workers), "--append-eod"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C would reach
        # A shell starts background jobs with SIGINT ignored, and children inherit that: give
        # the tool the disposition it has when started from a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    descriptor = _open_writer_when_read(fifo, process)
    payload = "".join(json.dumps({"text": f"document {index} " * 20}) + "\n"
                      for index in range(20_000)).encode()
    while payload:
        payload = payload[os.write(descriptor, payload):]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not any(os.path.getsize(path) > 0 for path in glob.glob(str(tmp_path / "*.tmp-*"))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the tool wrote nothing"
        time.sleep(0.05)
    assert process.poll() is None  # mid-run: still waiting for the rest of the input
    return process, descriptor


def _open_writer_when_read(fifo, process):
    # A non-blocking open fails until the tool opens the pipe for reading; never block here,
    # or a tool that died early would hang the test.
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the tool never opened its input"
            time.sleep(0.05)
            continue
        os.set_blocking(descriptor, True)
        return descriptor


def _final_outputs(tmp_path):
    return [name for name in os.listdir(tmp_path)
            if name.endswith((".bin", ".idx"))]


def test_ctrl_c_cleans_up_and_stops_the_workers(tmp_path):
    process, descriptor = _start_mid_run(tmp_path, workers=2)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) == 2

    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = process.communicate(timeout=60)
    os.close(descriptor)

    assert process.returncode == 130
    assert stderr.decode().splitlines()[-1] == "interrupted: no output was written"
    assert "Traceback" not in stderr.decode()
    assert sorted(os.listdir(tmp_path)) == ["input.jsonl"]  # no outputs, no temporary files
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_kill_leaves_only_temporary_files(tmp_path):
    process, descriptor = _start_mid_run(tmp_path, workers=1)
    process.kill()
    process.communicate(timeout=60)
    os.close(descriptor)

    assert process.returncode == -signal.SIGKILL
    assert _final_outputs(tmp_path) == []
    leftovers = sorted(set(os.listdir(tmp_path)) - {"input.jsonl"})
    assert leftovers == [f"out_text_document.bin.tmp-{process.pid}"]
