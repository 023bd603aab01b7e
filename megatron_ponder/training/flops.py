"""FLOPs of one PonderLM-2 training step, counted over ALL passes, and device peaks for MFU.

A pass over n = S*L slots (S slots per token) costs, per sequence, the standard transformer
count: 2 FLOPs per multiply-add of every weight for every slot, plus attention scores and
values (QK^T and AV: 2 * 2 * n * n * heads * head_dim per layer, counted without the causal
discount, as Megatron-LM does); backward is twice the forward. Only the final pass runs the
output layer, and only on the L slot-K positions. Passes outside ``--ponder-grad-passes`` run
forward only (1x instead of 3x). Activation recomputation is not counted (model FLOPs, not
hardware FLOPs).
"""

from typing import Iterable, List, Optional, Tuple

import torch

from megatron_ponder.config import ModelConfig, PonderConfig

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


def pass_flops(model: ModelConfig, num_tokens: int, num_slots: int, with_output: bool,
               with_backward: bool = True) -> int:
    """Forward (+ backward) FLOPs of one pass over one sequence of ``num_tokens`` tokens."""
    n = num_tokens * num_slots
    dense = 2 * layer_weight_macs_per_slot(model) * n
    attention = 4 * n * n * model.num_attention_heads * model.kv_channels
    forward = model.num_layers * (dense + attention)
    if with_output:
        forward += 2 * model.hidden_size * model.vocab_size * num_tokens
    return 3 * forward if with_backward else forward


def forward_passes(ponder: PonderConfig, num_latent_thoughts: int, jacobi_iterations: int,
                   training: bool = True) -> List[Tuple[int, bool, bool]]:
    """(slots per token, runs the output layer, builds a graph) of every pass of one forward
    with K = ``num_latent_thoughts``, read off the method's ``PassPlan``."""
    plan = ponder.method.plan(num_latent_thoughts, jacobi_iterations,
                              grad_passes=ponder.ponder_grad_passes if training else None)
    return [(step.slots, index == plan.final, plan.builds_graph(index))
            for index, step in enumerate(plan.passes)]


def inference_flops_per_token(model: ModelConfig, ponder: PonderConfig, seq_length: int,
                              jacobi_iterations: Optional[int] = None) -> float:
    """Forward FLOPs per token of generating with a KV cache: K+1 single-slot steps per token
    (one for vanilla; the Loop baseline runs the stack K+1 times), attending to a cache of
    ``slots * seq_length / 2`` slots on average, where ``slots`` is the final pass's slots per
    token (K+1; one for Loop), plus one output layer. Prefill (the Jacobi passes over the
    prompt) is not counted."""
    k = ponder.thoughts
    context = ponder.method.passes(k, 0)[-1].slots * seq_length / 2
    per_step = model.num_layers * (2 * layer_weight_macs_per_slot(model)
                                   + 4 * context * model.num_attention_heads * model.kv_channels)
    return (k + 1) * per_step + 2 * model.hidden_size * model.vocab_size


def step_flops(model: ModelConfig, ponder: PonderConfig, seq_length: int,
               micro_batch_size: int, jacobi_per_microbatch: Iterable[int],
               num_latent_thoughts: Optional[int] = None) -> int:
    """Training FLOPs of all micro-batches of a step (all data-parallel ranks' micro-batches).
    ``num_latent_thoughts`` overrides K (0 during ``--ponder-warmup-iters``)."""
    k = ponder.thoughts if num_latent_thoughts is None else num_latent_thoughts
    total = 0
    for jacobi in jacobi_per_microbatch:
        for slots, with_output, with_graph in forward_passes(ponder, k, jacobi):
            total += pass_flops(model, seq_length, slots, with_output, with_backward=with_graph)
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


def parameter_count(model: ModelConfig, ponder: Optional[PonderConfig] = None) -> int:
    """Parameters of the whole model (untied embedding and output layer included)."""
    h, d, ffn = model.hidden_size, model.kv_channels, model.ffn_hidden_size
    neox = model.arch == "gpt_neox"
    qkv_out = d * (model.num_attention_heads + 2 * model.num_query_groups)
    norm = 2 * h if neox else h  # LayerNorm has a bias, RMSNorm not
    layer = layer_weight_macs_per_slot(model) + 2 * norm
    if neox:  # biases of qkv, the attention output, and both MLP linears
        layer += qkv_out + h + ffn + h
    total = model.num_layers * layer + norm + 2 * model.vocab_size * h
    if ponder is not None and ponder.method.uses_pause_embedding(ponder.thoughts):
        total += h
    return total


def training_flops_per_token(model: ModelConfig, ponder: PonderConfig, seq_length: int) -> float:
    """Training FLOPs (forward and backward of every pass) per token, averaged over the J that
    --random-jacobi-iterations draws from (else the fixed J)."""
    choices = ponder.random_jacobi_iterations or (ponder.jacobi_iterations,)
    return sum(step_flops(model, ponder, seq_length, 1, [jacobi])
               for jacobi in choices) / len(choices) / seq_length
