"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingConfig:
    do_sample: bool = False
    """False: greedy (argmax); the other fields are then ignored."""
    temperature: float = 1.0
    """Logits are divided by it before top-k / top-p; must be > 0 when sampling."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p (1 = all)."""

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}; "
                             f"use do_sample=False for greedy decoding")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p on [B, V] logits; removed tokens get -inf."""
    logits = logits.float() / config.temperature
    if 0 < config.top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the more likely ones already reach top_p; the best always stays.
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= config.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_next_tokens(logits: torch.Tensor, config: SamplingConfig,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids."""
    if not config.do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, config).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
