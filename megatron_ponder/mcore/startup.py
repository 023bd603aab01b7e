"""Process start-up and tear-down around megatron-core: the one way training, model loading,
conversion and the tools make a process ready to build and run megatron models."""

import datetime
import logging
import os
import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_ponder.config import ParallelConfig
from megatron_ponder.mcore import cpu
from megatron_ponder.mcore.version import check_version

_CHECKPOINT_WRITER_LOGGER = "megatron.core.dist_checkpointing.strategies.filesystem_async"
# Whether the CPU layer was switched on by ``init`` (then ``shutdown`` switches it off).
_init_activated_cpu_layer = False


def init(parallel: Optional[ParallelConfig] = None, seed: Optional[int] = None, *,
         single_process: bool = False, timeout_minutes: int = 30) -> None:
    """Check the megatron-core version, switch the CPU layer on when CUDA is absent, join a
    process group and build megatron's parallel groups, then seed every RNG.

    The world is torchrun's when its environment is set (NCCL on GPU, gloo on CPU), else this
    process alone; ``single_process``: a gloo world of this process alone even under torchrun
    (loading one model in one process). ``parallel`` gives the tensor/pipeline sizes (default
    1). ``seed`` seeds Python, NumPy, torch and megatron's RNG tracker (the same seed on every
    rank; the initial weights depend on the seed alone, see ``model/init.py``).
    Idempotent: an existing process group and parallel groups are kept.
    """
    global _init_activated_cpu_layer
    # Its checkpoint writers' errors come back as the save's exception (one line for a full
    # disk, else raised with the error): not a second, earlier line too.
    logging.getLogger(_CHECKPOINT_WRITER_LOGGER).setLevel(logging.CRITICAL)
    if torch.cuda.is_available():
        check_version(strict=False)
    elif cpu.activate():
        _init_activated_cpu_layer = True
    from megatron.core import parallel_state, tensor_parallel

    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if single_process:
            # A HashStore needs no network port and no environment variables.
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
        else:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
                dist.init_process_group(backend, timeout=timeout)
            else:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                        timeout=timeout)
    if not parallel_state.model_parallel_is_initialized():
        parallel = parallel or ParallelConfig()
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        )
    if seed is not None:
        # megatron's RNG tracker (tensor-parallel regions fork it); on CPU it maps to torch's.
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def shutdown(keep_process_group: bool = False) -> None:
    """Tear down megatron's groups and the process group, so a process can start again, and
    switch the CPU layer off if ``init`` switched it on. ``keep_process_group``: megatron's
    groups only (the next ``init`` builds another layout in the same world)."""
    global _init_activated_cpu_layer
    from megatron.core import parallel_state

    if keep_process_group:
        parallel_state.destroy_model_parallel()
        return
    if dist.is_initialized():
        dist.barrier()
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    if _init_activated_cpu_layer:
        cpu.deactivate()
        _init_activated_cpu_layer = False
