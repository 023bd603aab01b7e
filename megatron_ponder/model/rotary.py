"""Rotary embedding angles for arbitrary (repeated) position ids.

In PonderLM-2 every slot of token t sits at position t, so positions repeat ([0,0,1,1,...] for
K=1). megatron-core's RotaryEmbedding only builds angles for 0..s-1 (and moves them to a CUDA
device); here we build them for any position ids and hand them to megatron's attention, which
applies them (rotate-half convention, to the first ``rotary_dim`` channels of each head).
"""

import torch


class RotaryAngles(torch.nn.Module):
    """Maps position ids to the [s, b or 1, 1, rotary_dim] angle tensor megatron expects."""

    def __init__(self, head_dim: int, rotary_percent: float = 1.0, base: float = 10000.0):
        super().__init__()
        rotary_dim = int(head_dim * rotary_percent)
        if rotary_dim < 2 or rotary_dim % 2:
            raise ValueError(f"rotary dimension {rotary_dim} (head_dim {head_dim} x "
                             f"{rotary_percent}) must be even and >= 2")
        self.rotary_dim = rotary_dim
        self.base = base
        exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
        # A plain attribute, not a buffer: module.to(bfloat16) / Float16Module would round it
        # (0.9 rad of error at position 2047). Not checkpointed: it is a function of the config.
        self._inv_freq = 1.0 / (base ** exponent)

    def inv_freq(self, device) -> torch.Tensor:
        if self._inv_freq.device != device:
            self._inv_freq = self._inv_freq.to(device)
        return self._inv_freq

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """position_ids: [s] (shared by the batch) or [b, s]. Returns float32 angles."""
        inv_freq = self.inv_freq(position_ids.device)
        pos = position_ids.to(torch.float32)
        if pos.dim() == 1:
            pos = pos[:, None]                 # [s, 1]
        else:
            pos = pos.transpose(0, 1)          # [s, b]
        freqs = pos[..., None] * inv_freq  # [s, b|1, d/2]
        return torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
