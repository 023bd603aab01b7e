"""NaN in the gradients of chosen steps, put there by a wrapper around pretrain_ponder.py: skipped
by default, a clean stop after --max-consecutive-nan-steps, a rollback with --rollback-on-nan.
"""

import math
import os
import sys
from typing import List

from tools.faults.harness import PRETRAIN, TINY_RUN, TRAIN_ITERS, Outcome, Run, Workspace, \
    clean_stop, iteration_dirs, logged_losses, tracked_iteration

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


def _nan_run(ws: Workspace, iterations: str, flags: List[str]) -> Run:
    return ws.run([sys.executable, "-c", NAN_WRAPPER, iterations, PRETRAIN] + flags)


def nan_rollback(ws: Workspace, name: str) -> Outcome:
    reference = ws.reference()
    root = os.path.join(ws.folder(name), "ckpt")
    run = _nan_run(ws, "4", TINY_RUN + ["--save", root, "--save-interval", "2",
                                        "--max-consecutive-nan-steps", "1",
                                        "--rollback-on-nan"])
    tried = "NaN in a gradient of iteration 4, --rollback-on-nan --max-consecutive-nan-steps 1"
    losses = logged_losses(run.stdout)
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
    if tracked_iteration(root) != str(TRAIN_ITERS):
        problems.append(f"tracker {tracked_iteration(root)}")
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
    lost = tracked_iteration(root) != "2" or iteration_dirs(root) != ["iter_0000002"]
    if lost:
        survived, detail = False, (f"checkpoints {iteration_dirs(root)}, tracker "
                                   f"{tracked_iteration(root)}")
    return Outcome(name, "NaN in the gradients of iterations 3 and 4, "
                   "--max-consecutive-nan-steps 2", survived, lost, detail)


def nan_skip(ws: Workspace, name: str) -> Outcome:
    run = _nan_run(ws, "3", TINY_RUN)
    losses = logged_losses(run.stdout)
    ok = (run.returncode == 0 and "iteration 3: NaN/inf in the gradients on rank 0: step skipped"
          in run.stdout and sorted(losses) == list(range(1, TRAIN_ITERS + 1)))
    detail = "skipped, logged, run finished" if ok else \
        f"exit {run.returncode}: {(run.stderr or run.stdout).strip()[-300:]}"
    return Outcome(name, "NaN in a gradient of iteration 3 (default flags)", ok, False, detail)
