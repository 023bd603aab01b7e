"""megatron-core's pipeline schedules as the pass pipeline uses them
(``parallel/pipeline.py``): every pass of a micro-batch is one virtual chunk of megatron's
interleaved schedule, and all chunks of a rank share one DDP module.

The schedule functions, their keyword arguments, the config fields they read and the
``finalize_model_grads_func`` signature are megatron-core 0.16's.
"""

import copy
from typing import Callable, Iterator, List

import torch


def pass_schedule_config(stage_config, num_chunks: int, pipeline_size: int,
                         ddp_model: torch.nn.Module):
    """A copy of the stage's TransformerConfig for a step of ``num_chunks`` chunks that all
    share ``ddp_model`` (megatron DDP around the stage)."""
    config = copy.copy(stage_config)
    if config.finalize_model_grads_func is not None:
        config.finalize_model_grads_func = _finalize_once(config.finalize_model_grads_func,
                                                          ddp_model)
    config.variable_seq_lengths = False  # messages are padded to one shape instead
    if num_chunks > 1:
        config.virtual_pipeline_model_parallel_size = num_chunks
        config.microbatch_group_size_per_vp_stage = pipeline_size
        # Unbatched p2p with overlap: the default batched p2p matched messages into swapped
        # buffers with PP=2 and virtual stages and gave silently wrong gradients.
        config.batch_p2p_comm = False
        config.overlap_p2p_comm = True
    else:  # one pass (K = 0): plain 1F1B, which does not overlap p2p
        config.virtual_pipeline_model_parallel_size = None
        config.overlap_p2p_comm = False
    return config


def _finalize_once(finalize: Callable, ddp_model: torch.nn.Module) -> Callable:
    """The chunks share one DDP module: finalize (DP reduction, sequence-parallel norm
    all-reduce, per-token scaling) once over it, not once per chunk."""
    def finalize_stage(_chunks, num_tokens=None, pg_collection=None, force_all_reduce=False):
        return finalize([ddp_model], num_tokens, pg_collection=pg_collection,
                        force_all_reduce=force_all_reduce)
    return finalize_stage


def run_pass_schedule(forward_step: Callable, data_iterators: List[Iterator],
                      chunks: List[torch.nn.Module], *, num_microbatches: int,
                      seq_length: int, micro_batch_size: int, forward_only: bool) -> List[dict]:
    """One step of megatron's interleaved 1F1B over ``chunks`` (plain 1F1B for one chunk);
    returns the loss reports (last stage) as megatron's schedules do. ``seq_length`` is the
    rows of every message (the schedule divides it by TP under sequence parallelism)."""
    from megatron.core.pipeline_parallel.schedules import (
        forward_backward_pipelining_with_interleaving,
        forward_backward_pipelining_without_interleaving,
    )

    schedule = (forward_backward_pipelining_with_interleaving if len(chunks) > 1
                else forward_backward_pipelining_without_interleaving)
    return schedule(forward_step_func=forward_step, data_iterator=data_iterators, model=chunks,
                    num_microbatches=num_microbatches, seq_length=seq_length,
                    micro_batch_size=micro_batch_size, forward_only=forward_only)
