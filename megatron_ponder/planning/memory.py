"""Per-GPU memory of a training layout: weights, gradients, optimizer state and the activations
kept for backward across all passes.

**Model state** (megatron-core DDP and optimizer as this project configures them): weights in
the training dtype (2 bytes with ``--bf16``/``--fp16``, else 4), the gradient buffer in fp32
(``grad_reduce_in_fp32``: 4 bytes), Adam's two moments in fp32 plus, with bf16/fp16, an fp32
master copy (8 or 12 bytes). ``--use-distributed-optimizer`` divides the optimizer state (not
the gradient buffer) by the data-parallel size. Tensor parallelism splits the linear layers,
the embedding and the output layer; norms and the row-parallel biases are replicated. Pipeline
stage 0 holds the embedding, the last stage the final norm and output layer.

**Activations** are the bytes autograd keeps for backward (what
``torch.autograd.graph.saved_tensors_hooks`` sees, unique storages, weights excluded), written
out per operation of this project's layers (``model/norms.py``, megatron-core's
``SelfAttention``/``MLP`` with the unfused CPU-safe paths, ``model/attention.py``):

* norm (``Norm``, computed in fp32): the input upcast to fp32 (the input itself in fp32, a
  copy otherwise), per row 1 fp32 (RMSNorm's rsqrt) or 2 (LayerNorm's mean and rstd); RMSNorm
  also keeps its normalised value before the weight; the output is kept by the next linear;
* linear: its input (under sequence parallelism the sequence shard: megatron re-gathers it in
  backward);
* attention with torch SDPA in its flash mode (the CPU flash kernel; on CUDA the flash and
  memory-efficient kernels save the same set): query, key, value, the output and a per-head
  fp32 log-sum-exp; no probability matrix. The output is laid out [b, s, heads, d], so the
  projection's input is a view of it (nothing more to keep). Key and value are views of the fused QKV output, so
  that whole buffer stays alive; with grouped-query attention they are repeated copies and the
  buffer is freed. Rotary keeps cos and sin for query and key. ``attention="math"`` models the
  unfused path instead (it also keeps the [heads, n, n] probabilities);
* MLP: SwiGLU keeps the fc1 output (2 x FFN), the SiLU output, the linear half plus megatron's
  ``glu_linear_offset`` (a new tensor) and the product (fc2's input); GeLU keeps the biased fc1
  output and the GeLU output;
* dropout: this project trains with dropout 0, where torch keeps nothing (no term);
* residual adds and the splice keep nothing.

Outside the layers: the final norm in every pass (its output is also the next pass's thoughts);
in the final pass the output layer's input and the cross entropy's fp32 softmax over the
vocabulary shard; the token ids (with TP also the vocabulary-parallel embedding's shifted ids
and mask). On pipeline stages after the first, messages are padded to (K+1) L rows and the
first layer may keep the whole padded message (``message_padding_bytes``). Not counted (they
are not saved by autograd): the output tensors megatron's pipeline schedule holds until their
backward (one message per in-flight unit) and the gradients alive during backward.

``--recompute-granularity full`` keeps only each layer's input (plus one copy of the rotary
angles per pass); the peak comes when backward recomputes the first layer (the last layer of
the final pass): everything kept, less the final pass's norm/output/loss already backpropagated,
plus that layer's activations (``recompute_transient_bytes``). ``selective`` recomputes the core
attention: it drops the log-sum-exp (and the probabilities of the math path), but the output
stays, as the projection's input. Passes outside ``--ponder-grad-passes`` keep nothing.

Which passes are alive at the peak: with one stage, all passes of one micro-batch (the forward
of a micro-batch runs to the end before its backward); with pipeline parallelism, megatron's
interleaved 1F1B schedule over (micro-batch, pass) units, simulated exactly
(``peak_inflight_bytes``): stage r runs (P - r - 1) * 2 + (V - 1) * P warm-up units before its
first backward. Backends not modelled: Transformer Engine's fused norms, fused rotary and its
own attention (on a CUDA machine with TE the linears come from TE but the norms, rotary and
SDPA attention remain the ones modelled here).
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.training.flops import forward_passes

RECOMPUTE_SETTINGS = ("none", "selective", "full")
ATTENTION_KINDS = ("flash", "math")


# --------------------------------------------------------------------------- parameters
def _layer_parameters(model: ModelConfig, tp: int) -> int:
    """Parameters of one decoder layer held by one tensor-parallel rank."""
    h, d, ffn = model.hidden_size, model.kv_channels, model.ffn_hidden_size
    neox = model.arch == "gpt_neox"
    qkv_out = d * (model.num_attention_heads + 2 * model.num_query_groups)
    split = h * qkv_out + d * model.num_attention_heads * h \
        + (2 if not neox else 1) * h * ffn + ffn * h
    replicated = 2 * (2 * h if neox else h)  # two norms (LayerNorm has a bias)
    if neox:
        split += qkv_out + ffn          # column-parallel biases are split
        replicated += 2 * h            # row-parallel biases are replicated
    return math.ceil(split / tp) + replicated


def stage_parameters(model: ModelConfig, tp: int, pp: int, stage: int,
                     ponder: Optional[PonderConfig] = None) -> int:
    """Parameters held by one rank of pipeline stage ``stage`` (0-based)."""
    h = model.hidden_size
    count = model.num_layers // pp * _layer_parameters(model, tp)
    if stage == 0:
        count += math.ceil(model.vocab_size / tp) * h
        if ponder is not None and ponder.method.uses_pause_embedding(ponder.thoughts):
            count += h
    if stage == pp - 1:
        count += math.ceil(model.vocab_size / tp) * h + (2 * h if model.arch == "gpt_neox" else h)
    return count


@dataclass(frozen=True)
class ModelState:
    parameters: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes


def model_state_bytes(parameters: int, mixed_precision: bool, dp: int,
                      distributed_optimizer: bool) -> ModelState:
    """Bytes of weights, fp32 gradient buffer and Adam state for ``parameters`` on one rank."""
    weight = (2 if mixed_precision else 4) * parameters
    grad = 4 * parameters
    optimizer = (12 if mixed_precision else 8) * parameters
    if distributed_optimizer:
        optimizer = math.ceil(optimizer / dp)
    return ModelState(parameters, weight, grad, optimizer)


# --------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class ActivationSetup:
    """What the activation model needs besides the model shape."""

    micro_batch_size: int
    seq_length: int
    tp: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"
    dtype_bytes: int = 4            # 4 fp32, 2 bf16/fp16
    attention: str = "flash"

    def __post_init__(self):
        if self.recompute not in RECOMPUTE_SETTINGS:
            raise ValueError(f"unknown recompute setting {self.recompute!r}; choose one of "
                             f"{RECOMPUTE_SETTINGS}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {self.attention!r}; choose one of "
                             f"{ATTENTION_KINDS}")
        if self.dtype_bytes not in (2, 4):
            raise ValueError(f"dtype_bytes must be 2 or 4, got {self.dtype_bytes}")


def _norm_terms(arch: str, rows: int, h: int, e: int, with_output: bool = True) -> int:
    """Bytes one ``Norm`` keeps over ``rows`` rows (its output counted when no other op
    keeps it)."""
    upcast = rows * h * 4
    if arch == "llama":  # RMSNorm: x32, rsqrt, normalised value, (output: the next linear's)
        return upcast + rows * 4 + rows * h * e + (rows * h * e if with_output else 0)
    return upcast + 2 * rows * 4 + (rows * h * e if with_output else 0)


def layer_terms(model: ModelConfig, setup: ActivationSetup, slots: int) -> Dict[str, int]:
    """Bytes one decoder layer keeps for backward in one pass with ``slots`` slots per token,
    by term, without recomputation."""
    e, tp, b = setup.dtype_bytes, setup.tp, setup.micro_batch_size
    h, d = model.hidden_size, model.kv_channels
    tokens = setup.seq_length * slots                 # rows of one sequence
    rows = tokens * b                                 # full rows (after the SP gather)
    rows_sp = rows // tp if setup.sequence_parallel else rows
    heads = model.num_attention_heads // tp
    groups = max(model.num_query_groups // tp, 1)
    ffn = model.ffn_hidden_size // tp
    rotary = int(d * model.rotary_percent)
    neox = model.arch == "gpt_neox"
    terms = {}
    if neox and e == 4:  # both norms read the same fp32 input: one copy
        terms["norms"] = 2 * _norm_terms("gpt_neox", rows_sp, h, e) - rows_sp * h * 4
    else:
        terms["norms"] = 2 * _norm_terms(model.arch, rows_sp, h, e)
    gqa = groups != heads
    qkv = rows * (heads + 2 * groups) * d * e
    attention = rows * heads * d * e                  # rotated query (a new tensor)
    if gqa:
        attention += 2 * rows * heads * d * e         # repeated key and value
    else:
        attention += rows * groups * d * e + qkv      # rotated key; value keeps the QKV buffer
    terms["attention_inputs"] = attention
    terms["rotary"] = 4 * tokens * rotary * e          # cos and sin, for query and key
    # The output is also the projection's input, so it stays under selective recompute too.
    terms["attention_output"] = rows * heads * d * e
    terms["attention_softmax"] = rows * heads * 4                   # fp32 log-sum-exp
    if setup.attention == "math":
        terms["attention_softmax"] += b * heads * tokens * tokens * e  # probabilities
    if neox:
        terms["mlp"] = 2 * rows * ffn * e
    else:
        terms["mlp"] = 5 * rows * ffn * e  # fc1 output (2 ffn), SiLU, linear half + 0, product
    return terms


def layer_bytes(model: ModelConfig, setup: ActivationSetup, slots: int) -> int:
    """Bytes one decoder layer keeps in one pass under ``setup.recompute``."""
    terms = layer_terms(model, setup, slots)
    if setup.recompute == "full":
        return layer_input_bytes(model, setup, slots)
    if setup.recompute == "selective":
        return sum(terms.values()) - terms["attention_softmax"]
    return sum(terms.values())


def layer_input_bytes(model: ModelConfig, setup: ActivationSetup, slots: int) -> int:
    rows = setup.seq_length * slots * setup.micro_batch_size
    if setup.sequence_parallel:
        rows //= setup.tp
    return rows * model.hidden_size * setup.dtype_bytes


def pass_extra_bytes(model: ModelConfig, setup: ActivationSetup, slots: int,
                     first_stage: bool, last_stage: bool, final_pass: bool) -> int:
    """Bytes one pass keeps outside the decoder layers on one stage."""
    e, b, h = setup.dtype_bytes, setup.micro_batch_size, model.hidden_size
    rows = setup.seq_length * slots * b
    rows_sp = rows // setup.tp if setup.sequence_parallel else rows
    total = 0
    if setup.recompute == "full":  # the rotary angles, one tensor per pass
        total += setup.seq_length * slots * int(model.kv_channels * model.rotary_percent) * 4
    if last_stage:
        # Final norm; its output is kept by the output layer in the final pass and is the
        # next pass's thoughts otherwise (not kept by the splice).
        total += _norm_terms(model.arch, rows_sp, h, e, with_output=final_pass)
        if final_pass:
            tokens = setup.seq_length * b
            vocab = math.ceil(model.vocab_size / setup.tp)
            total += tokens * vocab * 4 + tokens * (1 + 8)  # softmax, target mask and ids
            total += tokens * 4                              # the loss mask
    if first_stage and final_pass:
        total += setup.seq_length * b * 8                    # token ids (embedding backward)
        if setup.tp > 1:  # the vocabulary-parallel embedding's shifted ids and their mask
            total += setup.seq_length * b * (8 + 1)
    return total


def message_padding_bytes(model: ModelConfig, setup: ActivationSetup, slots: int,
                          max_slots: int) -> int:
    """On a pipeline stage after the first, every received message is padded to ``max_slots``
    slots per token; the first layer's input is a slice of it. The slice keeps the whole
    message alive when the first op saves it as is: the fp32 norm (in fp32 its upcast is the
    input itself) or full recomputation (it saves the layer input)."""
    if setup.dtype_bytes != 4 and setup.recompute != "full":
        return 0
    rows = setup.seq_length * (max_slots - slots) * setup.micro_batch_size
    if setup.sequence_parallel:
        rows //= setup.tp
    return rows * model.hidden_size * setup.dtype_bytes


def recompute_transient_bytes(model: ModelConfig, setup: ActivationSetup, slots: int) -> int:
    """Extra bytes alive while one layer is recomputed in backward (full recompute): its
    activations, less its input, which the checkpoint already keeps and which the recomputed
    fp32 norm saves again as is (in bf16 the norm saves an fp32 copy instead)."""
    if setup.recompute != "full":
        return 0
    internals = sum(layer_terms(model, setup, slots).values())
    if setup.dtype_bytes == 4:
        internals -= layer_input_bytes(model, setup, slots)
    return internals


def freed_before_recompute_bytes(model: ModelConfig, setup: ActivationSetup, slots: int,
                                 last_stage: bool) -> int:
    """What the final pass keeps after its layers (final norm, output layer, loss), which
    backward frees before it recomputes the first layer."""
    if setup.recompute != "full" or not last_stage:
        return 0
    b = setup.micro_batch_size
    rows = setup.seq_length * slots * b
    rows_sp = rows // setup.tp if setup.sequence_parallel else rows
    tokens = setup.seq_length * b
    return (_norm_terms(model.arch, rows_sp, model.hidden_size, setup.dtype_bytes)
            + tokens * math.ceil(model.vocab_size / setup.tp) * 4 + tokens * (1 + 8 + 4))


def unit_bytes(model: ModelConfig, setup: ActivationSetup, layers: int, slots: int,
               first_stage: bool, last_stage: bool, final_pass: bool) -> int:
    """Bytes kept by one (micro-batch, pass) unit on a stage with ``layers`` layers."""
    return layers * layer_bytes(model, setup, slots) + pass_extra_bytes(
        model, setup, slots, first_stage, last_stage, final_pass)


def pass_units(ponder: PonderConfig, jacobi_iterations: int) -> List[tuple]:
    """(slots, final pass, keeps a graph) of every pass of one micro-batch."""
    return forward_passes(ponder, ponder.thoughts, jacobi_iterations)


def schedule_order(num_microbatches: int, num_chunks: int, pipeline_size: int,
                   stage: int) -> List[tuple]:
    """Megatron's interleaved 1F1B order on one stage: a list of ("F"|"B", micro-batch,
    chunk). Forward units go chunk by chunk in groups of ``pipeline_size`` micro-batches;
    backward units in the same order with the chunk mirrored."""
    table = []
    for start in range(0, num_microbatches, pipeline_size):
        group = range(start, num_microbatches if start + pipeline_size >= num_microbatches
                      else start + pipeline_size)
        table += [(m, c) for c in range(num_chunks) for m in group]
    total = len(table)
    if pipeline_size == 1:
        warmup = 0
    else:
        warmup = min((pipeline_size - stage - 1) * 2 + (num_chunks - 1) * pipeline_size, total)
    order = [("F",) + table[i] for i in range(warmup)]
    backward = [(m, num_chunks - 1 - c) for m, c in table]
    for i in range(total - warmup):
        order.append(("F",) + table[warmup + i])
        order.append(("B",) + backward[i])
    order += [("B",) + backward[i] for i in range(total - warmup, total)]
    return order


def peak_inflight_bytes(sizes: Sequence[int], num_microbatches: int, pipeline_size: int,
                        stage: int) -> int:
    """Peak of the bytes kept by forwarded, not yet backwarded units on ``stage``; ``sizes[c]``
    is the bytes of chunk (pass) c of one micro-batch. With one stage: one micro-batch at a
    time (forward of all its passes, then backward)."""
    if pipeline_size == 1:
        return sum(sizes)
    alive, peak = 0, 0
    for kind, _, chunk in schedule_order(num_microbatches, len(sizes), pipeline_size, stage):
        alive += sizes[chunk] if kind == "F" else -sizes[chunk]
        peak = max(peak, alive)
    return peak


@dataclass(frozen=True)
class ActivationEstimate:
    stage: int
    kept_bytes: int          # peak of the activations kept for backward
    transient_bytes: int     # recomputation of one layer during backward (full recompute)

    @property
    def total(self) -> int:
        return self.kept_bytes + self.transient_bytes


def activation_bytes(model: ModelConfig, ponder: PonderConfig, setup: ActivationSetup,
                     jacobi_iterations: int, pipeline_size: int = 1, stage: int = 0,
                     num_microbatches: int = 1) -> ActivationEstimate:
    """Peak activation bytes kept for backward on one rank of ``stage``."""
    if model.num_layers % pipeline_size:
        raise ValueError(f"--num-layers {model.num_layers} is not divisible by the pipeline "
                         f"size {pipeline_size}")
    layers = model.num_layers // pipeline_size
    first, last = stage == 0, stage == pipeline_size - 1
    passes = pass_units(ponder, jacobi_iterations)
    max_slots = max(slots for slots, _, _ in passes)
    sizes = [unit_bytes(model, setup, layers, slots, first, last, final)
             + (0 if first else message_padding_bytes(model, setup, slots, max_slots))
             if graph else 0
             for slots, final, graph in passes]
    kept = peak_inflight_bytes(sizes, num_microbatches, pipeline_size, stage)
    transient = 0
    if setup.recompute == "full" and any(graph for _, _, graph in passes):
        # The first recompute in backward (the last layer of the final pass, the widest) is
        # the peak: everything forward kept is still alive except the final pass's tail.
        final_slots = passes[-1][0]
        transient = max(0, recompute_transient_bytes(model, setup, final_slots)
                        - freed_before_recompute_bytes(model, setup, final_slots, last))
    return ActivationEstimate(stage, kept, transient)
