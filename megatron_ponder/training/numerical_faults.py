"""What a run does about NaN/inf: Megatron-LM's --check-for-nan-in-loss-and-grad, plus
--max-consecutive-nan-steps and --rollback-on-nan.

A step with NaN/inf in any micro-batch's loss or any gradient, on any rank, is skipped (no
optimizer or learning-rate step; ``find_non_finite`` is the collective that finds it). After
--max-consecutive-nan-steps such steps in a row the run stops, or with --rollback-on-nan it
reloads the newest checkpoint and skips the bad steps' data when it reaches them again. The
policy decides; the Trainer reloads and repositions the data.
"""

from typing import List, Optional, Set

import torch
import torch.distributed as dist

from megatron_ponder.devices import default_device
from megatron_ponder.errors import FatalRunError


class NumericalFaultError(FatalRunError):
    """Too many consecutive steps with NaN/inf (--max-consecutive-nan-steps)."""


def find_non_finite(reports: List[dict], ddp_model, check_grads: bool) -> Optional[str]:
    """Collective over all ranks: None if the loss of every micro-batch (and, with
    ``check_grads``, every gradient in the DDP buffers) is finite on every rank, else what was
    found where ("NaN/inf in the gradients on rank 1"), the same on every rank."""
    local = torch.zeros(2, dtype=torch.float32, device=default_device())
    for report in reports:
        if not torch.isfinite(report["lm loss"]).all():
            local[0] = 1
    if check_grads:
        for buffer in ddp_model.buffers + ddp_model.expert_parallel_buffers:
            if not torch.isfinite(buffer.grad_data).all():
                local[1] = 1
                break
    found = local.clone()
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    if not found.any():
        return None
    flags = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(flags, local)
    parts = []
    for index, what in enumerate(("the loss", "the gradients")):
        ranks = [rank for rank, flag in enumerate(flags) if flag[index]]
        if ranks:
            parts.append(f"{what} on rank{'s' if len(ranks) > 1 else ''} "
                         f"{', '.join(map(str, ranks))}")
    return "NaN/inf in " + " and ".join(parts)


class NumericalFaultPolicy:
    """Counts consecutive NaN/inf steps and says when to stop or roll back; remembers which
    iterations' data a rollback skips."""

    def __init__(self, max_consecutive: int, rollback: bool):
        self.max_consecutive = max_consecutive
        self.rollback = rollback
        self.consecutive = 0
        self.iterations_to_skip: Set[int] = set()
        """Iterations (1-based) whose data a rollback skips when they come again."""

    def skips(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-based) is one whose data a rollback skips."""
        return iteration in self.iterations_to_skip

    def record(self, non_finite: Optional[str]) -> None:
        """Count a finished step and what NaN/inf it had (None: none)."""
        self.consecutive = self.consecutive + 1 if non_finite else 0

    def must_roll_back(self, iteration: int, non_finite: Optional[str]) -> bool:
        """After iteration ``iteration`` (1-based, recorded): True to roll back now. Raises
        NumericalFaultError when the run must stop instead."""
        if not (self.max_consecutive and self.consecutive >= self.max_consecutive):
            return False
        if self.rollback:
            return True
        raise NumericalFaultError(
            f"stopping after iteration {iteration}: {self.consecutive} consecutive steps with "
            f"NaN/inf (--max-consecutive-nan-steps {self.max_consecutive}), the last "
            f"{non_finite}; no checkpoint was written for them: resume from the last one "
            f"(--ckpt-step to go further back), or pass --rollback-on-nan to do that and "
            f"skip their data")

    def bad_iterations(self, iteration: int) -> List[int]:
        """The consecutive bad iterations that ended at ``iteration``."""
        return list(range(iteration - self.consecutive + 1, iteration + 1))

    def no_checkpoint(self, iteration: int, reason: Optional[str], root: str):
        return NumericalFaultError(
            f"stopping after iteration {iteration}: {self.consecutive} consecutive steps with "
            f"NaN/inf, the last {reason}, and no checkpoint in {root} to roll back to yet "
            f"(--rollback-on-nan; save earlier with --save-interval)")

    def rolled_back(self, failed_at: int, checkpoint_iteration: int) -> List[int]:
        """After reloading the checkpoint of ``checkpoint_iteration``: mark the bad steps after
        it to be skipped, reset the count, and return them."""
        skipped = [i for i in self.bad_iterations(failed_at) if i > checkpoint_iteration]
        self.iterations_to_skip.update(skipped)
        self.consecutive = 0
        return skipped
