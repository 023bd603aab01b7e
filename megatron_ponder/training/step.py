"""The per-micro-batch forward step handed to megatron-core's schedules."""

from functools import partial
from typing import List, Optional

import torch
from megatron.core import parallel_state

from megatron_ponder.config import PonderConfig
from megatron_ponder.model.ponder import draw_jacobi_iterations


class PonderForwardStep:
    """``forward_step_func(data_iterator, model)`` for megatron's schedules.

    Draws J per micro-batch from (seed, iteration, global micro-batch index), where the global
    index counts micro-batches across data-parallel ranks in sample order, so a run with more
    data-parallel ranks sees the same J for the same samples. Losses are summed over tokens and
    returned with the token count (megatron's per-token loss path), so gradient accumulation
    and the data-parallel reduction average over tokens exactly.
    """

    def __init__(self, ponder: PonderConfig, seed: int):
        self.ponder = ponder
        self.seed = seed
        self.iteration = 0
        self.training = True
        self.microbatch = 0
        self.jacobi_used: List[int] = []

    def begin(self, iteration: int, training: bool) -> None:
        self.iteration, self.training, self.microbatch = iteration, training, 0
        self.jacobi_used = []

    def jacobi_for(self, microbatch: int) -> int:
        choices = self.ponder.random_jacobi_iterations
        if not self.training or not choices:
            return self.ponder.jacobi_iterations
        dp_size = parallel_state.get_data_parallel_world_size()
        global_index = microbatch * dp_size + parallel_state.get_data_parallel_rank()
        return draw_jacobi_iterations(choices, self.seed, self.iteration, global_index)

    def __call__(self, data_iterator, model):
        batch = next(data_iterator)
        device = _device()
        tokens = batch["tokens"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(device, non_blocking=True)
        jacobi = self.jacobi_for(self.microbatch)
        self.jacobi_used.append(jacobi)
        self.microbatch += 1
        losses = model(tokens, labels=labels, jacobi_iterations=jacobi)
        return losses, partial(token_loss, loss_mask)


def token_loss(loss_mask: torch.Tensor, losses: torch.Tensor):
    """(summed loss, token count, {"lm loss": [sum, count]}) for megatron's schedules."""
    mask = loss_mask.float()
    loss_sum = (losses.float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": report}


def reduce_reported_loss(reports: List[dict]) -> Optional[float]:
    """Token-weighted mean loss over this step's micro-batches and all data-parallel ranks.
    None on ranks that do not compute the loss (non-last pipeline stages)."""
    if not reports:
        return None
    total = torch.stack([r["lm loss"] for r in reports]).sum(0).double()
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return (total[0] / total[1].clamp(min=1)).item()


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
