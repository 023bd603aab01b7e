"""Inference: KV-cache generation, adaptive Jacobi scoring, padded batches, sampling."""

from megatron_ponder.inference.attention_hooks import KVCache, PaddedPassMask, key_value_hook
from megatron_ponder.inference.generation import GenerationOutput, decode_token, generate
from megatron_ponder.inference.passes import (
    ADAPTIVE,
    JacobiSchedule,
    PassReport,
    run_ponder_passes,
)
from megatron_ponder.inference.sampling import SamplingConfig, choose_next_tokens, filter_logits

__all__ = [
    "ADAPTIVE",
    "GenerationOutput",
    "JacobiSchedule",
    "KVCache",
    "PaddedPassMask",
    "PassReport",
    "SamplingConfig",
    "choose_next_tokens",
    "decode_token",
    "filter_logits",
    "generate",
    "key_value_hook",
    "run_ponder_passes",
]
