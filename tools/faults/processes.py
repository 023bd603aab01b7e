"""Processes killed mid-run: ``kill -9`` of a training job's whole process group at a moment
after an iteration or inside a save, SIGTERM with and without --exit-signal-handler (then the
same command again, which must finish like the reference), and ``kill -9`` of
tools/preprocess_data.py while it writes (nothing under the final names, the rerun completes).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from megatron_ponder.checkpoint.layout import checkpoint_dir
from tools.faults.harness import PREPROCESS, Outcome, Workspace, check_continued, \
    iteration_dirs, read_text, resume_flags, tracked_iteration


def _wait_for(predicate: Callable[[], bool], process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def _where(root: str) -> str:
    """Where a killed run stood: inside a save (its newest directory is past the tracker or
    has no manifest yet) or between saves."""
    tracker = tracked_iteration(root)
    directories = iteration_dirs(root)
    if directories:
        newest = directories[-1]
        if int(newest[5:]) > int(tracker or 0) or \
                not os.path.isfile(os.path.join(root, newest, "manifest.json")):
            return f"inside the save of iteration {int(newest[5:])}"
    return f"between saves, last complete: {tracker or 'none'}"


def kill_fault(after_iteration: Optional[int], fraction: float, in_save: Optional[int] = None,
               sig: int = signal.SIGKILL, handler: bool = False, async_save: bool = False):
    """A job killed (``sig`` to its whole process group) ``fraction`` of an iteration after it
    logged ``after_iteration`` (0: once it logged that training starts), or, with ``in_save``,
    that fraction of a save into the save of that iteration; then resubmitted."""

    def inject(ws: Workspace, name: str) -> Outcome:
        reference = ws.reference()
        root = os.path.join(ws.folder(name), "ckpt")
        extra = (["--exit-signal-handler"] if handler else []) + \
            (["--async-save"] if async_save else [])
        flags = resume_flags(root, *extra)
        log_path = os.path.join(ws.root, name, "first.log")
        process = ws.start_pretrain(flags, log_path)
        if in_save is not None:
            directory = checkpoint_dir(root, in_save)
            reached = _wait_for(lambda: os.path.isdir(directory), process, ws.timeout)
            # A save of this model takes a fraction of an iteration.
            delay = fraction * reference.iteration_seconds * 0.5
        else:
            marker = ("starting from scratch" if after_iteration == 0
                      else f"iteration {after_iteration:8d}/")
            reached = _wait_for(lambda: marker in read_text(log_path), process, ws.timeout)
            delay = fraction * reference.iteration_seconds
        if reached:
            time.sleep(delay)
        placed = process.poll() is None
        what = {signal.SIGKILL: "kill -9", signal.SIGTERM: "SIGTERM"}[sig]
        if placed:
            where = _where(root)
            if handler:  # as a scheduler signals the job's main process
                os.kill(process.pid, sig)
            else:  # the whole process group, as when a node dies
                os.killpg(process.pid, sig)
        else:
            where = "the run had ended"
        try:
            process.wait(timeout=ws.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        point = (f"{fraction:.2f} of a save into the save of iteration {in_save}"
                 if in_save is not None else
                 f"{fraction:.2f} of an iteration after iteration {after_iteration}")
        tried = f"{what} {point} ({where}), then the same command again"
        first = read_text(log_path)
        if handler and placed:
            stopped = re.search(r"exiting after iteration (\d+): received SIGTERM", first)
            if process.returncode != 0 or not stopped or \
                    tracked_iteration(root) != stopped.group(1):
                return Outcome(name, tried, False, False,
                               f"no clean stop with a checkpoint after SIGTERM (exit "
                               f"{process.returncode}, tracker {tracked_iteration(root)})")
        if "Traceback (most recent call last)" in first and not placed:
            return Outcome(name, tried, False, False, "the first run failed by itself")
        survived, lost, detail = check_continued(ws, root, ws.pretrain(flags))
        return Outcome(name, tried, survived, lost, detail, injected=placed)

    return inject


def preprocess_kill(ws: Workspace, name: str) -> Outcome:
    """kill -9 of preprocess_data.py while it writes: nothing under the final names; the same
    command then completes."""
    folder = ws.folder(name)
    source = os.path.join(folder, "input.jsonl")
    with open(source, "w") as f:
        for index in range(40_000):
            f.write(json.dumps({"text": f"document {index} " * 30}) + "\n")
    out = ws.folder(name, "out")
    argv = [sys.executable, PREPROCESS, "--input", source, "--output-prefix",
            os.path.join(out, "data"), "--workers", "1"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=ws.env(), start_new_session=True)
    started = _wait_for(lambda: any(os.path.getsize(os.path.join(out, n)) > 0
                                    for n in os.listdir(out)), process, ws.timeout)
    if started:
        time.sleep(ws.rng.uniform(0, 0.5))
    placed = process.poll() is None
    if placed:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    final = [n for n in os.listdir(out) if n.endswith((".bin", ".idx"))]
    tried = "kill -9 while writing, then the same command again"
    if final:
        return Outcome(name, tried, False, True, f"final outputs after the kill: {final}",
                       injected=placed)
    again = ws.run(argv)
    final = sorted(n for n in os.listdir(out) if n.endswith((".bin", ".idx")))
    ok = again.returncode == 0 and final == ["data_text_document.bin", "data_text_document.idx"]
    return Outcome(name, tried, ok, False,
                   "no output after the kill; the rerun wrote both files" if ok
                   else f"rerun: exit {again.returncode}, {final}: {again.stderr[-300:]}",
                   injected=placed)
