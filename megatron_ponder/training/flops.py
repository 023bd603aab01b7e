"""FLOPs of one PonderLM-2 training step, counted over ALL passes, and device peaks for MFU.

A pass over n = S*L slots (S slots per token) costs, per sequence, the standard transformer
count: 2 FLOPs per multiply-add of every weight for every slot, plus attention scores and
values (QK^T and AV: 2 * 2 * n * n * heads * head_dim per layer, counted without the causal
discount, as Megatron-LM does); backward is twice the forward. Only the final pass runs the
output layer, and only on the L slot-K positions. Activation recomputation is not counted
(model FLOPs, not hardware FLOPs).
"""

from typing import Iterable, Optional

import torch

from megatron_ponder.config import ModelConfig
from megatron_ponder.model.ponder import pass_schedule

# Dense bf16 peak TFLOP/s by device-name fragment (datasheet values, no sparsity).
_PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
    ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("A10G", 70.0), ("V100", 125.0),
)


def layer_weight_macs_per_slot(model: ModelConfig) -> int:
    """Multiply-adds of one decoder layer's weights for one slot."""
    h, d = model.hidden_size, model.kv_channels
    qkv = h * d * (model.num_attention_heads + 2 * model.num_query_groups)
    proj = d * model.num_attention_heads * h
    mlp = (3 if model.arch == "llama" else 2) * h * model.ffn_hidden_size
    return qkv + proj + mlp


def pass_flops(model: ModelConfig, num_tokens: int, num_slots: int, with_output: bool) -> int:
    """Forward + backward FLOPs of one pass over one sequence of ``num_tokens`` tokens."""
    n = num_tokens * num_slots
    dense = 2 * layer_weight_macs_per_slot(model) * n
    attention = 4 * n * n * model.num_attention_heads * model.kv_channels
    forward = model.num_layers * (dense + attention)
    if with_output:
        forward += 2 * model.hidden_size * model.vocab_size * num_tokens
    return 3 * forward


def step_flops(model: ModelConfig, num_latent_thoughts: int, seq_length: int,
               micro_batch_size: int, jacobi_per_microbatch: Iterable[int]) -> int:
    """FLOPs of all micro-batches of a step (all data-parallel ranks' micro-batches)."""
    total = 0
    for jacobi in jacobi_per_microbatch:
        schedule = pass_schedule(num_latent_thoughts, jacobi)
        for index, slots in enumerate(schedule):
            total += pass_flops(model, seq_length, slots, with_output=index == len(schedule) - 1)
    return total * micro_batch_size


def device_peak_tflops(device: Optional[torch.device] = None) -> Optional[float]:
    """Datasheet dense bf16 peak of the current GPU, or None when unknown (e.g. CPU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in _PEAK_BF16_TFLOPS:
        if fragment in name:
            return peak
    return None
