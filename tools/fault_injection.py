#!/usr/bin/env python3
"""Inject faults into real training and preprocessing runs and check that each one is survived.

Every fault runs the real command (pretrain_ponder.py or tools/preprocess_data.py, as
subprocesses, on CPU with a tiny model) and is judged "survived" when either

* the run continued: resubmitting the same command finished the training with losses and a
  final checkpoint bit-identical to those of an uninterrupted reference run (kills, SIGTERM,
  damaged checkpoints: the resume cases), or went on as documented (NaN with --rollback-on-nan);
* or it stopped cleanly: a non-zero exit status, no Python traceback, one ``error:`` line on
  stderr naming the problem, and nothing written half (no checkpoint directory or output file
  left that a later run would trust).

"data lost" is "yes" when a fault left something wrong that a later run would use (a
checkpoint or dataset file written half, losses that differ from the reference), else "no".

    python tools/fault_injection.py --quick               # >= 20 faults, minutes on 2 cores
    python tools/fault_injection.py                       # more kill points, every fault
    python tools/fault_injection.py --faults layout-tp-heads preprocess-empty-input
    python tools/fault_injection.py --list                # the fault names

Prints a table (fault, tried, survived, data lost) and as its last line
``faults: N injected, M survived, L lost``; ``--json PATH`` writes the results. The exit status
is 1 when a fault was not survived. ``--seed`` fixes the random kill moments (the moments are
in units of the reference run's own iteration time, so they land at the same place in the run
on a faster or slower machine).
"""

import argparse
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout

from megatron_ponder.checkpoint.layout import TRACKER_FILE, checkpoint_dir  # noqa: E402

PRETRAIN = os.path.join(REPO, "pretrain_ponder.py")
PREPROCESS = os.path.join(REPO, "tools", "preprocess_data.py")
TRAIN_ITERS = 6

# The tiny model of the training tests (tests/training/test_pretrain.py), shorter batches.
TINY_RUN = [
    "--model-arch", "gpt_neox", "--num-layers", "2", "--hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "32",
    "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200",
    "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "3e-3",
    "--lr-warmup-iters", "1", "--num-latent-thoughts", "1", "--random-jacobi-iterations",
    "--num-workers", "0", "--log-interval", "1", "--eval-iters", "0", "--seed", "7",
    "--train-iters", str(TRAIN_ITERS),
]

# Runs pretrain_ponder.py with NaN put into one gradient after the backward of the given
# iterations (1-based, comma-separated): argv = ITERATIONS pretrain_ponder.py FLAGS...
NAN_WRAPPER = r"""
import runpy, sys
iterations = {int(i) for i in sys.argv[1].split(",")}
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
from megatron_ponder.training.trainer import Trainer
real_compute_gradients = Trainer.compute_gradients
def compute_gradients(self, data_iterator):
    reports = real_compute_gradients(self, data_iterator)
    if self.iteration + 1 in iterations:
        self.model.buffers[0].grad_data[0] = float("nan")
    return reports
Trainer.compute_gradients = compute_gradients
runpy.run_path(script, run_name="__main__")
"""

_LOSS_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?\| lm loss: ([^|]+?) \|")
_RESUMED = re.compile(r"loaded checkpoint from .* at iteration (\d+)")


@dataclasses.dataclass
class Outcome:
    fault: str
    tried: str
    survived: bool
    data_lost: bool
    detail: str
    injected: bool = True
    """False when the fault could not be placed (the run ended before the kill moment)."""
    seconds: float = 0.0


@dataclasses.dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


@dataclasses.dataclass
class Reference:
    """The uninterrupted run every resume case is compared with."""

    root: str
    losses: Dict[int, str]
    final_checkpoint: Dict[str, str]
    iteration_seconds: float


class Workspace:
    """Temporary files, the random kill moments and what several faults share (the reference
    run, a small dataset), built once on first use."""

    def __init__(self, root: str, seed: int, timeout: float):
        self.root = root
        self.rng = random.Random(seed)
        self.timeout = timeout
        self._reference: Optional[Reference] = None
        self._dataset: Optional[Tuple[str, str]] = None

    def folder(self, *parts: str) -> str:
        path = os.path.join(self.root, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    # ------------------------------------------------------------------ processes
    def env(self, **extra: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
        # The code next to this tool, whatever is installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        env["PYTHONWARNINGS"] = "ignore"
        env.update(extra)
        return env

    def run(self, argv: List[str], env: Optional[Dict[str, str]] = None,
            cwd: Optional[str] = None) -> Run:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  env=env or self.env(), cwd=cwd, timeout=self.timeout)
        except subprocess.TimeoutExpired as expired:
            return Run(-9, _text(expired.stdout), _text(expired.stderr), timed_out=True)
        return Run(done.returncode, done.stdout, done.stderr)

    def pretrain(self, flags: List[str], **env: str) -> Run:
        return self.run([sys.executable, PRETRAIN] + flags, self.env(**env))

    def start_pretrain(self, flags: List[str], log_path: str) -> subprocess.Popen:
        log = open(log_path, "w")
        try:
            return subprocess.Popen([sys.executable, PRETRAIN] + flags, stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env(),
                                    start_new_session=True)  # kill -9 takes its helpers too
        finally:
            log.close()

    # ------------------------------------------------------------------ shared fixtures
    def reference(self) -> Reference:
        """Train TRAIN_ITERS iterations, saving every iteration, timing the iterations."""
        if self._reference is None:
            root = os.path.join(self.folder("reference"), "ckpt")
            log_path = os.path.join(self.root, "reference", "train.log")
            process = self.start_pretrain(resume_flags(root), log_path)
            seen: Dict[int, float] = {}
            deadline = time.monotonic() + self.timeout
            while process.poll() is None and time.monotonic() < deadline:
                for iteration in _losses(_read(log_path)):
                    seen.setdefault(iteration, time.monotonic())
                time.sleep(0.01)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            text = _read(log_path)
            losses = _losses(text)
            if process.returncode != 0 or sorted(losses) != list(range(1, TRAIN_ITERS + 1)):
                raise RuntimeError(f"the reference run failed (exit {process.returncode}):\n"
                                   + "\n".join(text.splitlines()[-15:]))
            times = [seen[i] for i in sorted(seen)]
            per_iteration = ((times[-1] - times[0]) / (len(times) - 1)
                             if len(times) > 1 else 1.0)
            self._reference = Reference(root, losses, _data_files(root, TRAIN_ITERS),
                                        max(per_iteration, 0.05))
        return self._reference

    def dataset(self) -> Tuple[str, str]:
        """Two small datasets written by one preprocess_data.py run (keys text and other):
        (prefix of the first, prefix of the second)."""
        if self._dataset is None:
            folder = self.folder("dataset")
            source = os.path.join(folder, "corpus.jsonl")
            words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
            rng = random.Random(0)
            with open(source, "w") as f:
                for _ in range(60):
                    f.write(json.dumps({
                        "text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 80))),
                        "other": " ".join(rng.choice(words) for _ in range(rng.randint(5, 20))),
                    }) + "\n")
            prefix = os.path.join(folder, "corpus")
            run = self.run([sys.executable, PREPROCESS, "--input", source, "--output-prefix",
                            prefix, "--json-keys", "text", "other", "--append-eod",
                            "--workers", "1"])
            if run.returncode != 0:
                raise RuntimeError(f"preprocess_data.py failed:\n{run.stderr[-2000:]}")
            self._dataset = (prefix + "_text_document", prefix + "_other_document")
        return self._dataset


# ---------------------------------------------------------------------------- small helpers
def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _losses(text: str) -> Dict[int, str]:
    """{iteration: the logged loss} (the last line wins when an iteration ran twice)."""
    return {int(m.group(1)): m.group(2).strip() for m in _LOSS_LINE.finditer(text)}


def resume_flags(root: str, *extra: str) -> List[str]:
    """A job that saves every iteration and resumes from its own checkpoints when resubmitted."""
    return TINY_RUN + ["--save", root, "--load", root, "--save-interval", "1", *extra]


def _iteration_dirs(root: str) -> List[str]:
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if name.startswith("iter_"))


def _data_files(root: str, iteration: int) -> Dict[str, str]:
    """{file: CRC32} of the tensor files of a checkpoint (not common.pt, which records the
    run's flags, nor the manifest)."""
    path = checkpoint_dir(root, iteration)
    files = {}
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        if name.endswith(".distcp"):
            with open(os.path.join(path, name), "rb") as f:
                files[name] = f"{zlib.crc32(f.read()):08x}"
    return files


def _tracker(root: str) -> Optional[str]:
    path = os.path.join(root, TRACKER_FILE)
    return _read(path).strip() if os.path.isfile(path) else None


def _snapshot(folder: str) -> Dict[str, Tuple[int, int]]:
    """{relative path: (size, mtime)} of every file under ``folder``."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            status = os.stat(path)
            found[os.path.relpath(path, folder)] = (status.st_size, status.st_mtime_ns)
    return found


def _flip_bit(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))


def _largest_shard(path: str) -> str:
    shards = [name for name in os.listdir(path) if name.endswith(".distcp")]
    return os.path.join(path, max(shards, key=lambda n: os.path.getsize(os.path.join(path, n))))


def clean_stop(run: Run, *named: str) -> Tuple[bool, str]:
    """(survived, detail) for a run that should stop with one clear line naming ``named``."""
    if run.timed_out:
        return False, "did not stop (timed out)"
    if run.returncode == 0:
        return False, "exit status 0: the fault went unnoticed"
    if "Traceback (most recent call last)" in run.stderr:
        last = [line for line in run.stderr.strip().splitlines() if line.strip()][-1:]
        return False, f"a traceback: {last[0] if last else ''}"
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    if len(errors) != 1:
        return False, f"{len(errors)} error lines on stderr: {run.stderr.strip()[-300:]!r}"
    missing = [text for text in named if text not in errors[0]]
    if missing:
        return False, f"the error line does not name {missing}: {errors[0]}"
    return True, errors[0]


def _check_continued(ws: Workspace, root: str, run: Run) -> Tuple[bool, bool, str]:
    """(survived, data lost, detail) for a resubmitted job that should have finished exactly
    like the reference."""
    reference = ws.reference()
    if run.returncode != 0 or run.timed_out:
        last = (run.stderr or run.stdout).strip().splitlines()[-1:]
        return False, True, (f"the resumed run failed (exit {run.returncode}): "
                             f"{last[0] if last else ''}")
    losses = _losses(run.stdout)
    resumed = _RESUMED.search(run.stdout)
    start = int(resumed.group(1)) if resumed else 0
    expected = list(range(start + 1, TRAIN_ITERS + 1))
    if sorted(losses) != expected:
        return False, True, f"logged iterations {sorted(losses)}, expected {expected}"
    different = [i for i in expected if losses[i] != reference.losses[i]]
    if different:
        return False, True, f"losses differ from the reference at iterations {different}"
    if _tracker(root) != str(TRAIN_ITERS):
        return False, True, f"the tracker names {_tracker(root)}, not {TRAIN_ITERS}"
    if _data_files(root, TRAIN_ITERS) != reference.final_checkpoint:
        return False, True, "the final checkpoint differs from the reference's"
    half = [name for name in _iteration_dirs(root)
            if not os.path.isfile(os.path.join(root, name, "manifest.json"))]
    if half:
        return False, True, f"checkpoint directories without a manifest left: {half}"
    return True, False, (f"resumed at iteration {start}; losses of iterations {start + 1}-"
                         f"{TRAIN_ITERS} and the final checkpoint bit-identical")


# ---------------------------------------------------------------------------- kills, SIGTERM
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
    tracker = _tracker(root)
    directories = _iteration_dirs(root)
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
            reached = _wait_for(lambda: marker in _read(log_path), process, ws.timeout)
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
        first = _read(log_path)
        if handler and placed:
            stopped = re.search(r"exiting after iteration (\d+): received SIGTERM", first)
            if process.returncode != 0 or not stopped or _tracker(root) != stopped.group(1):
                return Outcome(name, tried, False, False,
                               f"no clean stop with a checkpoint after SIGTERM (exit "
                               f"{process.returncode}, tracker {_tracker(root)})")
        if "Traceback (most recent call last)" in first and not placed:
            return Outcome(name, tried, False, False, "the first run failed by itself")
        survived, lost, detail = _check_continued(ws, root, ws.pretrain(flags))
        return Outcome(name, tried, survived, lost, detail, injected=placed)

    return inject


# ---------------------------------------------------------------------------- checkpoints
def _checkpoints_until(ws: Workspace, name: str, last: int) -> str:
    """A copy of the reference's checkpoints as a job stopped after iteration ``last`` left
    them (tracker at ``last``)."""
    root = os.path.join(ws.folder(name), "ckpt")
    shutil.copytree(ws.reference().root, root)
    for directory in _iteration_dirs(root):
        if int(directory[5:]) > last:
            shutil.rmtree(os.path.join(root, directory))
    with open(os.path.join(root, TRACKER_FILE), "w") as f:
        f.write(str(last))
    return root


def damage_fault(damage: Callable[[str, random.Random], str], falls_back_to: int,
                 expect_in_log: str):
    """Damage the newest of 4 saved checkpoints (``damage(iteration dir, rng)`` returns what
    it did), resubmit the job: it must report the damage, fall back to ``falls_back_to`` and
    finish exactly like the reference."""

    def inject(ws: Workspace, name: str) -> Outcome:
        root = _checkpoints_until(ws, name, 4)
        tried = damage(os.path.join(root, "iter_0000004"), ws.rng) + ", then resume"
        run = ws.pretrain(resume_flags(root))
        survived, lost, detail = _check_continued(ws, root, run)
        resumed = _RESUMED.search(run.stdout)
        if survived and (not resumed or int(resumed.group(1)) != falls_back_to):
            survived, detail = False, f"resumed at {resumed and resumed.group(1)}, expected " \
                                      f"{falls_back_to}"
        if survived and expect_in_log not in run.stdout:
            survived, detail = False, f"the log does not say {expect_in_log!r}"
        return Outcome(name, tried, survived, lost, detail)

    return inject


def _truncate_shard(path, rng):
    shard = _largest_shard(path)
    os.truncate(shard, os.path.getsize(shard) // 2)
    return f"truncate {os.path.basename(shard)} of iteration 4 to half"


def _flip_shard(path, rng):
    shard = _largest_shard(path)
    offset = rng.randrange(os.path.getsize(shard))
    _flip_bit(shard, offset)
    return f"flip a bit at byte {offset} of {os.path.basename(shard)} of iteration 4"


def _truncate_metadata(path, rng):
    metadata = os.path.join(path, ".metadata")
    os.truncate(metadata, os.path.getsize(metadata) // 2)
    return "truncate .metadata of iteration 4 to half"


def _flip_common(path, rng):
    common = os.path.join(path, "common.pt")
    offset = rng.randrange(os.path.getsize(common))
    _flip_bit(common, offset)
    return f"flip a bit at byte {offset} of common.pt of iteration 4"


def _delete_shard(path, rng):
    shard = _largest_shard(path)
    os.remove(shard)
    return f"delete {os.path.basename(shard)} of iteration 4"


def _delete_manifest(path, rng):
    os.remove(os.path.join(path, "manifest.json"))
    return "delete manifest.json of iteration 4"


def _delete_tracker(path, rng):
    os.remove(os.path.join(os.path.dirname(path), TRACKER_FILE))
    return f"delete {TRACKER_FILE}"


def _garbage_tracker(path, rng):
    with open(os.path.join(os.path.dirname(path), TRACKER_FILE), "w") as f:
        f.write("\x00\x13garbage")
    return f"overwrite {TRACKER_FILE} with garbage"


def _half_written_save(path, rng):
    root = os.path.dirname(path)
    partial = os.path.join(root, "iter_0000005")
    os.makedirs(partial)
    with open(os.path.join(partial, "__0_0.distcp"), "wb") as f:
        f.write(os.urandom(1000))
    return "leave a half-written iter_0000005 next to a complete iteration 4"


def ckpt_step_damaged(ws: Workspace, name: str) -> Outcome:
    root = _checkpoints_until(ws, name, 4)
    shard = _largest_shard(os.path.join(root, "iter_0000003"))
    os.truncate(shard, 10)
    before = _snapshot(root)
    run = ws.pretrain(resume_flags(root, "--ckpt-step", "3"))
    survived, detail = clean_stop(run, "iteration 3 is damaged", os.path.basename(shard),
                                  "truncated")
    lost = _snapshot(root) != before
    if lost:
        survived, detail = False, "the failed run changed the checkpoint directory"
    return Outcome(name, "truncate a shard of iteration 3, resume with --ckpt-step 3", survived,
                   lost, detail)


def every_checkpoint_damaged(ws: Workspace, name: str) -> Outcome:
    root = _checkpoints_until(ws, name, 4)
    for directory in _iteration_dirs(root):
        _flip_bit(_largest_shard(os.path.join(root, directory)), 100)
    before = _snapshot(root)
    run = ws.pretrain(resume_flags(root))
    survived, detail = clean_stop(run, "no intact checkpoint in", root)
    lost = _snapshot(root) != before
    if lost:
        survived, detail = False, "the failed run changed the checkpoint directory"
    return Outcome(name, "flip a bit in every saved checkpoint, resume", survived, lost, detail)


# ---------------------------------------------------------------------------- NaN
def _nan_run(ws: Workspace, iterations: str, flags: List[str]) -> Run:
    return ws.run([sys.executable, "-c", NAN_WRAPPER, iterations, PRETRAIN] + flags)


def nan_rollback(ws: Workspace, name: str) -> Outcome:
    reference = ws.reference()
    root = os.path.join(ws.folder(name), "ckpt")
    run = _nan_run(ws, "4", TINY_RUN + ["--save", root, "--save-interval", "2",
                                        "--max-consecutive-nan-steps", "1",
                                        "--rollback-on-nan"])
    tried = "NaN in a gradient of iteration 4, --rollback-on-nan --max-consecutive-nan-steps 1"
    losses = _losses(run.stdout)
    problems = []
    if run.returncode != 0:
        problems.append(f"exit status {run.returncode}: {run.stderr.strip()[-300:]}")
    if "rolled back to the checkpoint at iteration 2" not in run.stdout:
        problems.append("no rollback line")
    if "iteration 4: data skipped" not in run.stdout:
        problems.append("iteration 4's data not skipped")
    # Iteration 4's line is the bad step's (its loss is left out: "nan"); the rest are finite.
    if sorted(losses) != list(range(1, TRAIN_ITERS + 1)) or \
            any(not math.isfinite(float(loss)) for i, loss in losses.items() if i != 4):
        problems.append(f"losses {losses}")
    if any(losses.get(i) != reference.losses[i] for i in (1, 2, 3)):
        problems.append("iterations 1-3 (3 replayed after the rollback) differ from the "
                        "reference")
    if _tracker(root) != str(TRAIN_ITERS):
        problems.append(f"tracker {_tracker(root)}")
    detail = "; ".join(problems) or ("rolled back to iteration 2, replayed iteration 3 "
                                     "bit-identically, skipped iteration 4's data, finished "
                                     "with finite losses")
    return Outcome(name, tried, not problems, bool(problems) and run.returncode == 0, detail)


def nan_stop(ws: Workspace, name: str) -> Outcome:
    root = os.path.join(ws.folder(name), "ckpt")
    run = _nan_run(ws, "3,4", TINY_RUN + ["--save", root, "--save-interval", "2",
                                          "--max-consecutive-nan-steps", "2"])
    survived, detail = clean_stop(run, "2 consecutive steps with NaN/inf",
                                  "--max-consecutive-nan-steps 2")
    lost = _tracker(root) != "2" or _iteration_dirs(root) != ["iter_0000002"]
    if lost:
        survived, detail = False, f"checkpoints {_iteration_dirs(root)}, tracker {_tracker(root)}"
    return Outcome(name, "NaN in the gradients of iterations 3 and 4, "
                   "--max-consecutive-nan-steps 2", survived, lost, detail)


def nan_skip(ws: Workspace, name: str) -> Outcome:
    run = _nan_run(ws, "3", TINY_RUN)
    losses = _losses(run.stdout)
    ok = (run.returncode == 0 and "iteration 3: NaN/inf in the gradients on rank 0: step skipped"
          in run.stdout and sorted(losses) == list(range(1, TRAIN_ITERS + 1)))
    detail = "skipped, logged, run finished" if ok else \
        f"exit {run.returncode}: {(run.stderr or run.stdout).strip()[-300:]}"
    return Outcome(name, "NaN in a gradient of iteration 3 (default flags)", ok, False, detail)


# ---------------------------------------------------------------------------- a full disk
def _disk_bytes(path: str) -> int:
    """Bytes the files under ``path`` occupy on disk (whole blocks)."""
    return sum(os.stat(os.path.join(parent, n)).st_blocks * 512
               for parent, _, names in os.walk(path) for n in names)


def disk_full(ws: Workspace, name: str) -> Outcome:
    """--save on a filesystem with room for one checkpoint and a half (a tmpfs mounted for it:
    needs root). The save of iteration 2 must stop the run with one line naming the directory
    and the newest complete checkpoint, after a warning that it may not fit, and leave no
    partial directory; the checkpoints moved to a larger disk, the job resumes exactly."""
    reference = ws.reference()
    size = _disk_bytes(checkpoint_dir(reference.root, 1)) * 3 // 2 + 64 * 1024
    disk = ws.folder(name, "disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", disk],
                             capture_output=True, text=True)
    tried = f"--save on a {size // 1024} KiB filesystem (room for 1.5 checkpoints)"
    if mounted.returncode != 0:
        return Outcome(name, tried, False, False, "could not mount a tmpfs (needs root): "
                       + (mounted.stderr.strip() or "mount failed"), injected=False)
    root = os.path.join(disk, "ckpt")
    try:
        run = ws.pretrain(resume_flags(root))
        survived, detail = clean_stop(run, "no space left", root, "iter_0000002 was removed",
                                      "newest complete checkpoint is iteration 1")
        if survived and "may not fit" not in run.stdout:
            survived, detail = False, "no warning before the save that did not fit"
        lost = _tracker(root) != "1" or _iteration_dirs(root) != ["iter_0000001"]
        if lost:
            survived, detail = False, (f"left checkpoints {_iteration_dirs(root)}, tracker "
                                       f"{_tracker(root)}")
        moved = os.path.join(ws.folder(name), "ckpt")
        shutil.copytree(root, moved)
    finally:
        subprocess.run(["umount", disk], capture_output=True)
    if survived:
        survived, lost, resumed = _check_continued(ws, moved, ws.pretrain(resume_flags(moved)))
        detail = f"{detail}; moved to a larger disk: {resumed}"
    return Outcome(name, tried + ", then resumed elsewhere", survived, lost, detail)


# ---------------------------------------------------------------------------- data, layouts
def data_fault(make: Callable[[str, str, str], Tuple[str, str, List[str]]]):
    """Train on a dataset broken by ``make(folder, first prefix, second prefix)`` (returns
    what it did, the prefix to train on and the texts the error line must name)."""

    def inject(ws: Workspace, name: str) -> Outcome:
        first, second = ws.dataset()
        folder = ws.folder(name)
        tried, prefix, named = make(folder, first, second)
        save = os.path.join(folder, "ckpt")
        flags = [flag for flag in TINY_RUN if flag not in ("--mock-data",)]
        flags = _replace(flags, "--tokenizer-type", "HuggingFaceTokenizer")
        flags = [f for i, f in enumerate(flags)
                 if f != "--vocab-size" and (i == 0 or flags[i - 1] != "--vocab-size")]
        run = ws.pretrain(flags + ["--data-path", prefix, "--split", "90,10,0", "--save", save])
        survived, detail = clean_stop(run, *named)
        lost = os.path.exists(save) and bool(os.listdir(save))
        if lost:
            survived, detail = False, "a checkpoint was written"
        return Outcome(name, tried, survived, lost, detail)

    return inject


def _replace(flags: List[str], flag: str, value: str) -> List[str]:
    flags = list(flags)
    flags[flags.index(flag) + 1] = value
    return flags


def _copy_pair(folder: str, bin_from: str, idx_from: str) -> str:
    prefix = os.path.join(folder, "data_text_document")
    shutil.copyfile(bin_from + ".bin", prefix + ".bin")
    shutil.copyfile(idx_from + ".idx", prefix + ".idx")
    return prefix


def _missing_path(folder, first, second):
    prefix = os.path.join(folder, "nowhere_text_document")
    return "--data-path naming no files", prefix, ["nowhere_text_document", "missing"]


def _missing_bin(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    os.remove(prefix + ".bin")
    return "a dataset whose .bin is missing", prefix, [prefix + ".bin", "missing"]


def _mismatched_pair(folder, first, second):
    prefix = _copy_pair(folder, first, second)
    return ("a .bin with the .idx of another dataset", prefix,
            [prefix + ".bin", "do not belong together"])


def _truncated_bin(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    os.truncate(prefix + ".bin", os.path.getsize(prefix + ".bin") - 7)
    return "a .bin truncated by 7 bytes", prefix, [prefix + ".bin", "do not belong together"]


def _garbage_idx(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    with open(prefix + ".idx", "wb") as f:
        f.write(random.Random(1).randbytes(4096))
    return "an unreadable .idx (random bytes)", prefix, [prefix + ".idx",
                                                         "not a Megatron index"]


def _idx_is_directory(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    os.remove(prefix + ".idx")
    os.mkdir(prefix + ".idx")
    return "an unreadable .idx (a directory)", prefix, [prefix + ".idx", "missing"]


def layout_fault(world: int, flags: List[str], named: List[str]):
    """pretrain_ponder.py as one rank of a ``world``-process job with a layout it must
    refuse before starting anything."""

    def inject(ws: Workspace, name: str) -> Outcome:
        run = ws.pretrain(TINY_RUN + flags, RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
        survived, detail = clean_stop(run, *named)
        processes = f"{world} process" + ("es" if world != 1 else "")
        return Outcome(name, f"{processes} with {' '.join(flags)}", survived, False, detail)

    return inject


LAYOUTS = {
    "layout-world-size": (3, ["--tensor-model-parallel-size", "2"],
                          ["world size 3", "not divisible by tensor x pipeline parallel"]),
    "layout-tp-heads": (3, ["--tensor-model-parallel-size", "3"],
                        ["--num-attention-heads 4 is not divisible"]),
    "layout-pp-layers": (3, ["--pipeline-model-parallel-size", "3"],
                         ["--num-layers 2 is not divisible"]),
    "layout-global-batch": (2, ["--global-batch-size", "6"],
                            ["--global-batch-size 6 is not divisible"]),
    "layout-pp-microbatches": (2, ["--pipeline-model-parallel-size", "2",
                                   "--global-batch-size", "2"],
                               ["must be a multiple of --pipeline-model-parallel-size 2"]),
    "layout-sp-seq-length": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                 "--seq-length", "31"],
                             ["--seq-length 31 must be divisible"]),
    "layout-tp-zero": (1, ["--tensor-model-parallel-size", "0"],
                       ["must be >= 1"]),
    "layout-query-groups": (4, ["--model-arch", "llama", "--num-query-groups", "2",
                                "--ffn-hidden-size", "128", "--tensor-model-parallel-size",
                                "4"],
                            ["--num-query-groups 2 is not divisible"]),
    "layout-ffn": (4, ["--ffn-hidden-size", "90", "--tensor-model-parallel-size", "4"],
                   ["--ffn-hidden-size 90 is not divisible"]),
    "layout-pp-pause": (2, ["--pipeline-model-parallel-size", "2", "--ponder-method",
                            "pause"], ["is not supported with --pipeline-model-parallel-size"]),
    "rollback-without-save": (1, ["--rollback-on-nan"], ["--rollback-on-nan needs --save"]),
}


# ---------------------------------------------------------------------------- preprocessing
def preprocess_fault(content: Callable[[random.Random], bytes], named: List[str],
                     tried: str, line: Optional[int] = None, extra: Tuple[str, ...] = ()):
    """tools/preprocess_data.py on one bad input: one error line naming the input (and
    ``line``) and ``named``, and no output at all."""

    def inject(ws: Workspace, name: str) -> Outcome:
        folder = ws.folder(name)
        source = os.path.join(folder, "input.jsonl")
        data = content(ws.rng)
        if data is not None:
            with open(source, "wb") as f:
                f.write(data)
        out = ws.folder(name, "out")
        run = ws.run([sys.executable, PREPROCESS, "--input", source, "--output-prefix",
                      os.path.join(out, "data"), "--workers", "1", *extra])
        location = source if line is None else f"{source}:{line}"
        survived, detail = clean_stop(run, location, *named)
        left = os.listdir(out) if os.path.isdir(out) else []
        if left:
            survived, detail = False, f"files left in the output folder: {left}"
        return Outcome(name, tried, survived, bool(left), detail)

    return inject


def _binary(rng: random.Random) -> bytes:
    """A PNG signature (not UTF-8 from its first byte), then random bytes."""
    return b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(4096))


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


# ---------------------------------------------------------------------------- the fault list
@dataclasses.dataclass
class Fault:
    name: str
    inject: Callable[[Workspace, str], Outcome]
    quick: bool


def build_faults(full: bool, rng: random.Random) -> List[Fault]:
    """Every fault; ``quick`` marks the --quick subset. Kill moments come from ``rng``."""
    faults: List[Fault] = []
    random_kills = 8 if full else 2
    for index in range(random_kills):
        faults.append(Fault(f"kill-9-random-{index + 1}",
                            kill_fault(rng.randrange(0, TRAIN_ITERS - 1), rng.random()),
                            quick=index < 2))
    for index in range(5 if full else 2):
        faults.append(Fault(f"kill-9-in-save-{index + 1}",
                            kill_fault(None, rng.random(), in_save=rng.randrange(1, TRAIN_ITERS)),
                            quick=index < 2))
    faults.append(Fault("sigterm-exit-signal-handler",
                        kill_fault(rng.randrange(1, TRAIN_ITERS - 1), rng.random(),
                                   sig=signal.SIGTERM, handler=True), quick=True))
    faults.append(Fault("sigterm-no-handler",
                        kill_fault(rng.randrange(0, TRAIN_ITERS - 1), rng.random(),
                                   sig=signal.SIGTERM), quick=False))
    faults.append(Fault("kill-9-async-save",
                        kill_fault(None, rng.random(), in_save=rng.randrange(1, TRAIN_ITERS),
                                   async_save=True), quick=False))
    damaged = "checkpoint at iteration 4 is damaged"
    fallback = "falling back to the checkpoint at iteration 3"
    faults += [
        Fault("ckpt-truncated-shard", damage_fault(_truncate_shard, 3, fallback), True),
        Fault("ckpt-bit-flip-shard", damage_fault(_flip_shard, 3, fallback), True),
        Fault("ckpt-truncated-metadata", damage_fault(_truncate_metadata, 3, fallback), True),
        Fault("ckpt-bit-flip-common", damage_fault(_flip_common, 3, fallback), False),
        Fault("ckpt-deleted-shard", damage_fault(_delete_shard, 3, damaged), False),
        Fault("ckpt-deleted-manifest", damage_fault(_delete_manifest, 3, fallback), False),
        Fault("ckpt-deleted-tracker", damage_fault(_delete_tracker, 4, "is missing"), True),
        Fault("ckpt-garbage-tracker", damage_fault(_garbage_tracker, 4, "should hold an "
                                                   "iteration number"), False),
        Fault("ckpt-half-written-save", damage_fault(_half_written_save, 4, ""), False),
        Fault("ckpt-step-damaged", ckpt_step_damaged, True),
        Fault("ckpt-all-damaged", every_checkpoint_damaged, True),
        Fault("nan-rollback", nan_rollback, True),
        Fault("nan-stop", nan_stop, True),
        Fault("nan-skip", nan_skip, False),
        Fault("disk-full-save", disk_full, True),
        Fault("data-missing-path", data_fault(_missing_path), True),
        Fault("data-missing-bin", data_fault(_missing_bin), False),
        Fault("data-bin-idx-mismatch", data_fault(_mismatched_pair), True),
        Fault("data-truncated-bin", data_fault(_truncated_bin), False),
        Fault("data-unreadable-idx", data_fault(_garbage_idx), True),
        Fault("data-idx-is-directory", data_fault(_idx_is_directory), False),
    ]
    quick_layouts = {"layout-world-size", "layout-tp-heads", "layout-pp-microbatches",
                     "rollback-without-save"}
    for name, (world, flags, named) in LAYOUTS.items():
        faults.append(Fault(name, layout_fault(world, flags, named), name in quick_layouts))
    faults += [
        Fault("preprocess-malformed-json", preprocess_fault(
            lambda rng: b'{"text": "fine"}\n{"text": "broken\n', ["malformed JSON"],
            "a JSONL line cut in the middle", line=2), True),
        Fault("preprocess-non-utf8", preprocess_fault(
            lambda rng: b'{"text": "ok"}\n{"text": "caf\xe9"}\n', ["invalid UTF-8"],
            "Latin-1 bytes in a JSONL line", line=2), True),
        Fault("preprocess-empty-input", preprocess_fault(
            lambda rng: b"", ["no documents", "nothing written"], "an empty input file"), True),
        Fault("preprocess-binary-input", preprocess_fault(
            _binary, [], "4 KiB of random bytes as input", line=1), True),
        Fault("preprocess-missing-input", preprocess_fault(
            lambda rng: None, ["input file not found"], "an input path that does not exist"),
            True),
        Fault("preprocess-missing-key", preprocess_fault(
            lambda rng: b'{"body": "x"}\n', ["missing key 'text'"], "JSON without the key",
            line=1), False),
        Fault("preprocess-non-string", preprocess_fault(
            lambda rng: b'{"text": 12}\n', ["holds a number"], "a number as the text",
            line=1), False),
        Fault("preprocess-only-empty-documents", preprocess_fault(
            lambda rng: b'{"text": ""}\n\n', ["no documents", "nothing written"],
            "only empty documents"), False),
        Fault("preprocess-kill-9", preprocess_kill, False),
    ]
    return faults


# ---------------------------------------------------------------------------- running
def run_faults(faults: List[Fault], workspace: Workspace,
               progress: Optional[Callable[[Outcome], None]] = None) -> List[Outcome]:
    outcomes = []
    for fault in faults:
        start = time.monotonic()
        try:
            outcome = fault.inject(workspace, fault.name)
        except Exception as error:  # the tool's own failure: reported, never hidden
            outcome = Outcome(fault.name, "(the injection itself failed)", False, False,
                              f"{type(error).__name__}: {error}")
        outcome.seconds = round(time.monotonic() - start, 1)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes


def format_table(outcomes: List[Outcome]) -> str:
    rows = [("fault", "tried", "survived", "data lost")]
    for outcome in outcomes:
        rows.append((outcome.fault, outcome.tried,
                     ("yes" if outcome.survived else "NO") if outcome.injected
                     else "not injected", "YES" if outcome.data_lost else "no"))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|---|---|---|---|")
    return "\n".join(lines)


def summary_line(outcomes: List[Outcome]) -> str:
    injected = [o for o in outcomes if o.injected]
    survived = sum(o.survived for o in injected)
    lost = sum(o.data_lost for o in outcomes)
    return f"faults: {len(injected)} injected, {survived} survived, {lost} lost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the quick subset (>= 20 faults, a few kill points)")
    parser.add_argument("--faults", nargs="+", metavar="NAME",
                        help="run only these faults (see --list)")
    parser.add_argument("--list", action="store_true", help="print the fault names and exit")
    parser.add_argument("--seed", type=int, default=1234,
                        help="seed of the random kill moments (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="write the results here as JSON")
    parser.add_argument("--workdir", help="keep the runs' files here (default: a temporary "
                        "folder, deleted at the end)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds one command may run (default: %(default)s)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    faults = build_faults(full=not args.quick, rng=random.Random(args.seed))
    if args.list:
        for fault in faults:
            print(f"{fault.name}{'  (quick)' if fault.quick else ''}")
        return 0
    if args.faults:
        known = {fault.name: fault for fault in faults}
        unknown = [name for name in args.faults if name not in known]
        if unknown:
            print(f"error: unknown faults {unknown}; --list shows them", file=sys.stderr)
            return 2
        faults = [known[name] for name in args.faults]
    elif args.quick:
        faults = [fault for fault in faults if fault.quick]
    root = args.workdir or tempfile.mkdtemp(prefix="fault_injection_")
    os.makedirs(root, exist_ok=True)
    workspace = Workspace(root, args.seed, args.timeout)
    start = time.monotonic()

    def report(outcome: Outcome) -> None:
        verdict = ("survived" if outcome.survived else "NOT SURVIVED") if outcome.injected \
            else "not injected"
        print(f"[{outcome.seconds:6.1f}s] {outcome.fault}: {verdict}: {outcome.detail}",
              flush=True)

    try:
        outcomes = run_faults(faults, workspace, report)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - start
    print()
    print(format_table(outcomes))
    print(f"wall time: {seconds:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"outcomes": [dataclasses.asdict(o) for o in outcomes],
                       "summary": summary_line(outcomes), "seed": args.seed,
                       "quick": args.quick, "seconds": round(seconds, 1)}, f, indent=1)
    print(summary_line(outcomes))
    injected = [o for o in outcomes if o.injected]
    return 0 if all(o.survived for o in injected) and not any(o.data_lost for o in outcomes) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
