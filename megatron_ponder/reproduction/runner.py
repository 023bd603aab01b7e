"""Run the arms of a reproduction: one pretrain_ponder.py process per arm, resumable.

Layout under the output directory (``runs/reproduce/<recipe>``)::

    <arm>/checkpoints/      the arm's checkpoints (--save / --load)
    <arm>/train.log         its training log (appended to across restarts)
    <arm>/state.json        wall seconds spent training, summed over restarts
    <arm>/result.json       written once the arm is trained and evaluated: the arm is done

Running again skips finished arms and resumes the others from their last checkpoint, so a
killed reproduction loses at most each running arm's progress since its last save.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from megatron_ponder.checkpoint.layout import read_latest_iteration
from megatron_ponder.reproduction.recipes import Arm, Recipe, find_arm

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
_VALIDATION_LINE = re.compile(r"validation loss at iteration\s+(\d+) \| lm loss value: (\S+)")


@dataclass(frozen=True)
class Setup:
    """Where and how the arms run."""

    recipe: Recipe
    output_dir: str
    data_flags: Sequence[str]
    """--train-data-path/--valid-data-path or --data-path ..., and the tokenizer flags."""
    jobs: int = 1
    """Arms trained at the same time (each with cpu_threads threads)."""
    cpu_threads: Optional[int] = None
    nproc_per_node: int = 1
    """Processes per arm (GPUs); > 1 runs the arm under torchrun."""
    python: str = sys.executable

    def arm_dir(self, arm: Arm) -> str:
        return os.path.join(self.output_dir, arm.name)


def read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path: str, value) -> None:
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
    os.replace(partial, path)


def finished_runs(output_dir: str, arm_order: Sequence[str] = ()) -> List[dict]:
    """The result.json of every finished arm under ``output_dir``: arms whose family is in
    ``arm_order`` first, in that order (rates ascending), then the others by name."""
    runs = [read_json(os.path.join(output_dir, name, "result.json"))
            for name in sorted(os.listdir(output_dir))
            if os.path.isfile(os.path.join(output_dir, name, "result.json"))]
    rank = {name: index for index, name in enumerate(arm_order)}

    def key(run: dict):
        family = run.get("family", run["arm"])
        return (rank.get(family, len(rank)), family, run.get("lr", 0.0))
    return sorted(runs, key=key)


def checkpointed_iteration(checkpoint_dir: str) -> Optional[int]:
    """The iteration of the latest complete checkpoint in ``checkpoint_dir``, or None."""
    return read_latest_iteration(checkpoint_dir)


def training_flags(setup: Setup, arm: Arm, train_iters: int) -> List[str]:
    """The pretrain_ponder.py flags of ``arm`` (everything but --load/--finetune)."""
    recipe = setup.recipe
    layers = recipe.num_layers * (2 if arm.deeper else 1)
    checkpoints = os.path.join(setup.arm_dir(arm), "checkpoints")
    return [
        *recipe.model_flags, "--num-layers", str(layers),
        "--seq-length", str(recipe.seq_length),
        "--micro-batch-size", str(recipe.micro_batch_size),
        "--global-batch-size", str(recipe.global_batch_size),
        "--train-iters", str(train_iters), "--lr", str(arm.learning_rate(recipe)),
        "--lr-warmup-fraction", "0.02", "--lr-decay-style", "cosine",
        "--weight-decay", "0.1", "--clip-grad", "1.0", "--seed", str(arm.seed),
        "--eval-interval", str(recipe.eval_interval), "--eval-iters", str(recipe.eval_iters),
        "--log-interval", str(max(recipe.eval_interval // 2, 1)),
        "--save", checkpoints, "--save-interval", str(recipe.save_interval(train_iters)),
        "--num-workers", "0",
        *setup.data_flags, *recipe.extra_flags, *arm.flags,
    ]


def arm_train_iters(setup: Setup, arm: Arm, flops_of: Callable[[Arm, int], float]) -> int:
    """Iterations of ``arm``: the recipe's, the continued length, or (compute-matched) as
    many as fit the other arm's training FLOPs. ``flops_of(arm, iters)`` counts FLOPs."""
    if arm.flops_matched_to:  # FLOPs do not depend on the learning rate
        other = find_arm(setup.recipe, arm.flops_matched_to)
        budget = flops_of(other, setup.recipe.train_iters)
        return max(int(round(budget / flops_of(arm, 1))), 1)
    return arm.train_iters or setup.recipe.train_iters


def launch_command(setup: Setup, flags: Sequence[str]) -> List[str]:
    script = os.path.join(REPO_ROOT, "pretrain_ponder.py")
    if setup.nproc_per_node > 1:
        return [setup.python, "-m", "torch.distributed.run", "--nproc-per-node",
                str(setup.nproc_per_node), script, *flags]
    return [setup.python, script, *flags]


def resume_flags(setup: Setup, arm: Arm) -> List[str]:
    """--load the arm's own checkpoints when it has any; a continued arm without any starts
    from its source arm's final weights (--finetune: iteration 0, fresh optimizer)."""
    own = os.path.join(setup.arm_dir(arm), "checkpoints")
    if checkpointed_iteration(own) is not None or not arm.init_from:
        return ["--load", own]
    source = os.path.join(setup.output_dir, arm.init_from, "checkpoints")
    if checkpointed_iteration(source) is None:
        raise RuntimeError(f"arm {arm.name} continues {arm.init_from}, which has no checkpoint "
                           f"in {source} yet")
    return ["--load", source, "--finetune"]


def validation_curve(log_path: str) -> List[List[float]]:
    """[(iteration, validation loss)] from a training log (the last value per iteration,
    since a resumed run may repeat one)."""
    points: Dict[int, float] = {}
    if os.path.isfile(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                match = _VALIDATION_LINE.search(line)
                if match:
                    points[int(match.group(1))] = float(match.group(2))
    return [[iteration, points[iteration]] for iteration in sorted(points)]


class ArmProcess:
    """One arm's training subprocess; its wall time is added to state.json when it ends."""

    def __init__(self, setup: Setup, arm: Arm, train_iters: int, log: Callable[[str], None]):
        self.setup, self.arm, self.train_iters, self.log = setup, arm, train_iters, log
        directory = setup.arm_dir(arm)
        os.makedirs(directory, exist_ok=True)
        self.log_path = os.path.join(directory, "train.log")
        command = launch_command(setup, training_flags(setup, arm, train_iters)
                                 + resume_flags(setup, arm))
        env = dict(os.environ)
        if setup.cpu_threads:
            env["OMP_NUM_THREADS"] = str(setup.cpu_threads)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"$ {shlex.join(command)}\n")
        self.handle = open(self.log_path, "a", encoding="utf-8")
        self.start = time.time()
        self.process = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT,
                                        env=env, cwd=REPO_ROOT)
        log(f"[{arm.name}] training {train_iters} iterations (log: {self.log_path})")

    def poll(self) -> Optional[int]:
        code = self.process.poll()
        if code is not None:
            self._finish()
        return code

    def _finish(self) -> None:
        if self.handle.closed:
            return
        self.handle.close()
        state_path = os.path.join(self.setup.arm_dir(self.arm), "state.json")
        state = read_json(state_path) or {"train_seconds": 0.0, "segments": 0}
        state["train_seconds"] += time.time() - self.start
        state["segments"] += 1
        write_json(state_path, state)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._finish()
