"""Process-group set-up helpers shared by the model, training and inference entry points."""

import torch.distributed as dist
from megatron.core import parallel_state


def ensure_single_process_parallel_state() -> None:
    """Make megatron's parallel state usable in a plain single process (notebooks, tests,
    ``from_pretrained(engine="megatron")``): a world of one gloo rank with all parallel sizes 1. Does nothing when
    a launcher already set things up."""
    if not dist.is_initialized():
        # A HashStore needs no network port and no environment variables.
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
