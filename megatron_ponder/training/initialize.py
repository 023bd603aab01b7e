"""Process start-up for training: torch.distributed, megatron parallel state, seeds."""

import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from megatron_ponder.compat import activate_if_needed
from megatron_ponder.config import ParallelConfig


def initialize_distributed(parallel: ParallelConfig, seed: int, timeout_minutes: int = 30) -> None:
    """Join the torchrun world (NCCL on GPU, gloo on CPU) and build megatron's groups.

    Without torchrun's environment it starts a world of one process, so
    ``python pretrain_ponder.py ...`` works too.
    """
    activate_if_needed()
    from megatron.core import parallel_state, tensor_parallel

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        )
    # megatron's RNG tracker (tensor-parallel regions fork it); on CPU it maps to torch's RNG.
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    set_seeds(seed)


def set_seeds(seed: int) -> None:
    """Same seed on every rank (the initial weights depend on the seed only, model/init.py)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shutdown() -> None:
    """Tear down megatron's groups and the process group, so a process can start again."""
    from megatron.core import parallel_state

    if dist.is_initialized():
        dist.barrier()
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
