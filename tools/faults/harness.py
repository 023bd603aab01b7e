"""What every fault shares: the commands it runs (pretrain_ponder.py, tools/preprocess_data.py,
as subprocesses on CPU with a tiny model), the workspace (temporary folders, the random kill
moments, the uninterrupted reference run and a small dataset, each built once), reading what a
run left (its logged losses, checkpoint folders, the tracker) and the two verdicts: a clean stop
(``clean_stop``) and a run that continued exactly like the reference (``check_continued``).
"""

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zlib
from typing import Dict, List, Optional, Tuple

from megatron_ponder.checkpoint.layout import TRACKER_FILE, checkpoint_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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

_LOSS_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?\| lm loss: ([^|]+?) \|")
RESUMED = re.compile(r"loaded checkpoint from .* at iteration (\d+)")


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
                for iteration in logged_losses(read_text(log_path)):
                    seen.setdefault(iteration, time.monotonic())
                time.sleep(0.01)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            text = read_text(log_path)
            losses = logged_losses(text)
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


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def logged_losses(text: str) -> Dict[int, str]:
    """{iteration: the logged loss} (the last line wins when an iteration ran twice)."""
    return {int(m.group(1)): m.group(2).strip() for m in _LOSS_LINE.finditer(text)}


def resume_flags(root: str, *extra: str) -> List[str]:
    """A job that saves every iteration and resumes from its own checkpoints when resubmitted."""
    return TINY_RUN + ["--save", root, "--load", root, "--save-interval", "1", *extra]


def iteration_dirs(root: str) -> List[str]:
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


def tracked_iteration(root: str) -> Optional[str]:
    path = os.path.join(root, TRACKER_FILE)
    return read_text(path).strip() if os.path.isfile(path) else None


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


def check_continued(ws: Workspace, root: str, run: Run) -> Tuple[bool, bool, str]:
    """(survived, data lost, detail) for a resubmitted job that should have finished exactly
    like the reference."""
    reference = ws.reference()
    if run.returncode != 0 or run.timed_out:
        last = (run.stderr or run.stdout).strip().splitlines()[-1:]
        return False, True, (f"the resumed run failed (exit {run.returncode}): "
                             f"{last[0] if last else ''}")
    losses = logged_losses(run.stdout)
    resumed = RESUMED.search(run.stdout)
    start = int(resumed.group(1)) if resumed else 0
    expected = list(range(start + 1, TRAIN_ITERS + 1))
    if sorted(losses) != expected:
        return False, True, f"logged iterations {sorted(losses)}, expected {expected}"
    different = [i for i in expected if losses[i] != reference.losses[i]]
    if different:
        return False, True, f"losses differ from the reference at iterations {different}"
    if tracked_iteration(root) != str(TRAIN_ITERS):
        return False, True, f"the tracker names {tracked_iteration(root)}, not {TRAIN_ITERS}"
    if _data_files(root, TRAIN_ITERS) != reference.final_checkpoint:
        return False, True, "the final checkpoint differs from the reference's"
    half = [name for name in iteration_dirs(root)
            if not os.path.isfile(os.path.join(root, name, "manifest.json"))]
    if half:
        return False, True, f"checkpoint directories without a manifest left: {half}"
    return True, False, (f"resumed at iteration {start}; losses of iterations {start + 1}-"
                         f"{TRAIN_ITERS} and the final checkpoint bit-identical")
