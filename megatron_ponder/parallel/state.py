"""The device this process computes on (process groups are set up by
``megatron_ponder.mcore.init``)."""

import torch


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
