"""The per-micro-batch forward step handed to megatron-core's schedules."""

from functools import partial
from typing import List, Optional

import torch
from megatron.core import parallel_state

from megatron_ponder.config import PonderConfig
from megatron_ponder.devices import default_device
from megatron_ponder.model.ponder import draw_jacobi_iterations


class PonderForwardStep:
    """``forward_step_func(data_iterator, model)`` for megatron's schedules.

    Draws J per micro-batch from (seed, iteration, global micro-batch index), where the global
    index counts micro-batches across data-parallel ranks in sample order, so a run with more
    data-parallel ranks sees the same J for the same samples, and every tensor/pipeline rank of
    a data-parallel replica draws the same list without communicating. Losses are summed over
    tokens and returned with the token count (megatron's per-token loss path), so gradient
    accumulation and the data-parallel reduction average over tokens exactly.

    Under pipeline parallelism ``megatron_ponder.parallel.pipeline`` drives the passes itself and
    uses ``prepare``, ``loss_func_for`` and the step's ``jacobi_used`` and ``thoughts`` from
    here.
    """

    def __init__(self, ponder: PonderConfig, seed: int, data_parallel_size: int):
        self.ponder = ponder
        self.seed = seed
        self.data_parallel_size = data_parallel_size
        self.iteration = 0
        self.training = True
        self.microbatch = 0
        self.jacobi_used: List[int] = []
        """J of each of this rank's micro-batches in the current step."""
        self.thoughts = ponder.thoughts
        """K of the current step (0 during --ponder-warmup-iters)."""

    def begin(self, iteration: int, training: bool, num_microbatches: int) -> None:
        self.iteration, self.training, self.microbatch = iteration, training, 0
        self.jacobi_used = [self.jacobi_for(m) for m in range(num_microbatches)]
        self.thoughts = self.ponder.thoughts_at(iteration, training)

    def jacobi_for(self, microbatch: int) -> int:
        choices = self.ponder.random_jacobi_iterations
        if not self.training or not choices:
            return self.ponder.jacobi_iterations
        global_index = (microbatch * self.data_parallel_size
                        + parallel_state.get_data_parallel_rank())
        return draw_jacobi_iterations(choices, self.seed, self.iteration, global_index)

    @staticmethod
    def prepare(batch) -> dict:
        """The fields the model and loss need, on the device."""
        device = default_device()
        return {name: batch[name].to(device, non_blocking=True)
                for name in ("tokens", "labels", "loss_mask")}

    @staticmethod
    def loss_func_for(batch: dict):
        return partial(token_loss, batch["loss_mask"])

    def __call__(self, data_iterator, model):
        batch = self.prepare(next(data_iterator))
        jacobi = self.jacobi_used[self.microbatch]
        self.microbatch += 1
        losses = model(batch["tokens"], labels=batch["labels"], jacobi_iterations=jacobi,
                       num_latent_thoughts=self.thoughts)
        return losses, self.loss_func_for(batch)


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
