"""Train, evaluate and report every arm (``tools/reproduce.py`` is the command line).

Arms run ``setup.jobs`` at a time, longest first (by training FLOPs), a continued arm once its
source arm is done. A finished arm (result.json) is never rerun; an interrupted one resumes
from its last checkpoint.
"""

import os
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence

from megatron_ponder.reproduction import report
from megatron_ponder.reproduction.accounting import arm_config, arm_costs, \
    cumulative_training_flops
from megatron_ponder.reproduction.recipes import Arm
from megatron_ponder.reproduction.runner import REPO_ROOT, ArmProcess, Setup, \
    arm_train_iters, checkpointed_iteration, read_json, training_flags, validation_curve, \
    write_json


class Reproduction:
    def __init__(self, setup: Setup, arms: Sequence[Arm], valid_prefix: str,
                 eval_text: Optional[str] = None, log: Callable[[str], None] = print):
        self.setup, self.arms, self.valid_prefix = setup, list(arms), valid_prefix
        self.eval_text, self.log = eval_text, log
        self._configs: Dict[tuple, object] = {}
        self.iterations = {arm.name: arm_train_iters(setup, arm, self._flops_of)
                           for arm in self.arms}

    # ---------------------------------------------------------------- accounting
    def config(self, arm: Arm, iterations: int):
        key = (arm.name, iterations)
        if key not in self._configs:
            self._configs[key] = arm_config(training_flags(self.setup, arm, iterations))
        return self._configs[key]

    def _flops_of(self, arm: Arm, iterations: int) -> float:
        return cumulative_training_flops(self.config(arm, iterations), iterations)[-1]

    def result_path(self, arm: Arm) -> str:
        return os.path.join(self.setup.arm_dir(arm), "result.json")

    def is_done(self, arm: Arm) -> bool:
        return os.path.isfile(self.result_path(arm))

    # ---------------------------------------------------------------- running
    def run(self) -> List[dict]:
        """Train and evaluate every arm not done yet; returns all results (in arm order).
        Raises RuntimeError naming the arms that failed (the others still finish)."""
        pending = sorted((arm for arm in self.arms if not self.is_done(arm)),
                         key=lambda arm: -self._critical_path_flops(arm))
        running: Dict[str, ArmProcess] = {}
        failed: List[str] = []
        try:
            while pending or running:
                for name, process in list(running.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    del running[name]
                    arm = process.arm
                    if code == 0 and self._trained(arm):
                        self._evaluate(arm)
                    else:
                        failed.append(arm.name)
                        self.log(f"[{arm.name}] failed (exit {code}); see {process.log_path}")
                blocked = set(failed)
                for arm in list(pending):
                    if len(running) >= self.setup.jobs:
                        break
                    source = arm.init_from
                    if source and source in blocked:
                        pending.remove(arm)
                        failed.append(arm.name)
                        self.log(f"[{arm.name}] skipped: its source arm {source} failed")
                        continue
                    if source and not self.is_done(self._arm(source)):
                        continue
                    pending.remove(arm)
                    if self._trained(arm):  # trained before an interruption, not evaluated
                        self._evaluate(arm)
                        continue
                    running[arm.name] = ArmProcess(self.setup, arm, self.iterations[arm.name],
                                                   self.log)
                if running or pending:
                    time.sleep(2.0)
        finally:
            for process in running.values():
                process.kill()
        if failed:
            raise RuntimeError(f"arms failed: {', '.join(failed)}")
        return self.results()

    def _critical_path_flops(self, arm: Arm) -> float:
        """The arm's FLOPs plus those of the longest chain of arms that continue from it, so
        that a source arm starts early enough for its continuations not to run last."""
        followers = [other for other in self.arms if other.init_from == arm.name]
        return self._flops_of(arm, self.iterations[arm.name]) + max(
            (self._critical_path_flops(other) for other in followers), default=0.0)

    def _arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def _trained(self, arm: Arm) -> bool:
        iteration = checkpointed_iteration(os.path.join(self.setup.arm_dir(arm), "checkpoints"))
        return iteration is not None and iteration >= self.iterations[arm.name]

    def _evaluate(self, arm: Arm) -> None:
        """Score the final checkpoint (a subprocess: a fresh process per model) and write
        result.json, which marks the arm done."""
        directory = self.setup.arm_dir(arm)
        output = os.path.join(directory, "eval.json")
        command = [self.setup.python, "-m", "megatron_ponder.reproduction.evaluate",
                   "--load", os.path.join(directory, "checkpoints"),
                   "--valid-prefix", self.valid_prefix,
                   "--seq-length", str(self.setup.recipe.seq_length), "--output", output]
        if self.eval_text:
            command += ["--eval-text", self.eval_text]
        env = dict(os.environ)
        if self.setup.cpu_threads:
            env["OMP_NUM_THREADS"] = str(self.setup.cpu_threads)
        self.log(f"[{arm.name}] evaluating")
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"[{arm.name}] evaluation failed:\n{done.stderr[-3000:]}")
        result = self.describe(arm, read_json(output))
        write_json(self.result_path(arm), result)
        self.log(f"[{arm.name}] done: valid loss {result['valid_loss']:.4f}"
                 + (f", held-out {result['heldout_loss']:.4f}" if "heldout_loss" in result
                    else ""))

    # ---------------------------------------------------------------- reporting
    def describe(self, arm: Arm, evaluation: dict) -> dict:
        """The arm's row: costs, the validation curve against tokens and FLOPs (a continued
        arm's start at its source arm's totals) and the final scores."""
        iterations = self.iterations[arm.name]
        config = self.config(arm, iterations)
        flops = cumulative_training_flops(config, iterations)
        tokens_per_iteration = self.setup.recipe.tokens_per_iteration
        start_tokens = start_flops = 0.0
        if arm.init_from:
            source = read_json(self.result_path(self._arm(arm.init_from)))
            start_tokens, start_flops = source["training_tokens"], source["training_flops"]
        curve = [dict(iteration=iteration, loss=loss,
                      tokens=start_tokens + iteration * tokens_per_iteration,
                      flops=start_flops + (flops[iteration - 1] if iteration else 0.0))
                 for iteration, loss in validation_curve(
                     os.path.join(self.setup.arm_dir(arm), "train.log"))]
        state = read_json(os.path.join(self.setup.arm_dir(arm), "state.json")) or {}
        return dict(
            arm=arm.name, family=arm.family, lr=arm.learning_rate(self.setup.recipe),
            description=arm.description, group=arm.group, seed=arm.seed,
            iterations=iterations, continued_from=arm.init_from,
            training_tokens=start_tokens + iterations * tokens_per_iteration,
            training_flops=start_flops + flops[-1],
            train_seconds=state.get("train_seconds", 0.0),
            curve=curve, **arm_costs(config), **evaluation)

    def results(self) -> List[dict]:
        return [read_json(self.result_path(arm)) for arm in self.arms if self.is_done(arm)]

    def write_report(self) -> str:
        """table.md, results.json and the plots from every finished arm (report.write_report)."""
        return report.write_report(self.setup.output_dir, self.results())
