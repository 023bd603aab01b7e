"""Step time of a layout: compute per GPU with shape-dependent matmul efficiency, the
communication of ``communication.py`` on a topology, the pipeline bubble, and what overlaps.

**Compute.** Every matmul of a pass is timed on its own per-GPU shape (M rows = micro-batch x
sequence x slots, the tensor-parallel shard of K or N), forward and backward (input gradient
and weight gradient), as

    max(2 M K N / (peak x efficiency x wave fill), bytes moved / memory bandwidth)

``efficiency`` is the ``--mfu`` flag: the fraction of the bf16 peak the layers' work reaches at
large shapes (norms, elementwise ops and kernel gaps included). Two things make small per-GPU
shapes slower, which is what high tensor parallelism of a small model runs into:

* *wave fill*: a GPU runs one 128 x 128 output tile per streaming multiprocessor at a time, so a
  matmul of T tiles takes ceil(T / SMs) waves and fills T / (waves x SMs) of them (a [4096, 256]
  output has 64 tiles: under half of an H100's 132 SMs). Weight gradients reduce over the long
  M dimension and are split along it (split-K), so they fill the GPU;
* *memory bound*: a matmul whose arithmetic intensity (about K N / (K + N) FLOPs per byte) is
  under the GPU's peak / bandwidth runs at the speed of its reads and writes.

Attention's score and value products (counted as in ``training/flops.py``) run at
peak x efficiency. Full recomputation repeats each layer's forward, selective the attention.

**Communication** (``--gpus-per-node``, NVLink and network bandwidths and latencies,
``hardware.Interconnect``): ranks are placed as megatron orders them, tensor parallel fastest,
then data parallel, then pipeline, so tensor parallelism stays in a node while it fits. A
collective inside a node runs at the NVLink bandwidth; one spanning nodes at the network
bandwidth times the group's GPUs per node (one ring per network adapter), at most NVLink's; a
pipeline message across nodes at one GPU's network bandwidth. Each call also costs a latency.
What is exposed:

* tensor-parallel collectives sit between the matmuls of a layer: all exposed;
* pipeline messages: overlapped with compute when a step runs several chunks (the schedule's
  ``overlap_p2p_comm``), leaving the 2 (P - 1) messages of the fill and drain; with one chunk
  (K = 0, plain 1F1B) every message is exposed;
* the data-parallel gradient reduction overlaps with backward only with
  ``--overlap-grad-reduce`` (this project enables it for K = 0 or a fixed J): a gradient is
  complete after the last micro-batch's pass 0 (its whole backward for K = 0), so only that
  backward hides it; at least the last bucket stays exposed. The parameter all-gather after the
  optimizer step is exposed unless ``--overlap-param-gather`` (then its last bucket).
* the trainer's scalar collectives (loss, token count, gradient norm, NaN check) are left out.

The step: max over stages of (compute + tensor-parallel time) / (1 - bubble), plus the exposed
pipeline, gradient and parameter communication and the optimizer step (its state streamed
through memory once).
"""

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.planning.communication import Collective, CommSetup, step_collectives
from megatron_ponder.planning.hardware import GPUSpec, Interconnect
from megatron_ponder.planning.memory import stage_parameters
from megatron_ponder.training.flops import forward_passes

TILE = 128                           # output tile edge of a bf16 matmul kernel
OPTIMIZER_BYTES_PER_PARAMETER = 30  # fp32 grad read, master/m/v read+write, bf16 weight write


@dataclass(frozen=True)
class Hardware:
    gpu: GPUSpec
    interconnect: Interconnect
    efficiency: float = 0.5

    @property
    def flops_per_second(self) -> float:
        return self.gpu.peak_bf16_tflops * 1e12 * self.efficiency

    @property
    def bytes_per_second(self) -> float:
        return self.gpu.memory_bandwidth_tbs * 1e12


def wave_fill(rows: int, columns: int, sm_count: int) -> float:
    """Fraction of the GPU's tile slots a [rows, columns] output keeps busy over its waves."""
    tiles = math.ceil(rows / TILE) * math.ceil(columns / TILE)
    waves = math.ceil(tiles / sm_count)
    return tiles / (waves * sm_count)


def matmul_seconds(m: int, k: int, n: int, hardware: Hardware, dtype_bytes: int,
                   split_k: bool = False) -> float:
    """[m, k] @ [k, n] on one GPU."""
    fill = 1.0 if split_k else wave_fill(m, n, hardware.gpu.sm_count)
    compute = 2.0 * m * k * n / (hardware.flops_per_second * fill)
    memory = dtype_bytes * (m * k + k * n + m * n) / hardware.bytes_per_second
    return max(compute, memory)


def _linear_seconds(m: int, k: int, n: int, hardware: Hardware, e: int, backward: bool) -> float:
    forward = matmul_seconds(m, k, n, hardware, e)
    if not backward:
        return forward
    input_grad = matmul_seconds(m, n, k, hardware, e)
    weight_grad = matmul_seconds(k, m, n, hardware, e, split_k=True)
    return forward + input_grad + weight_grad


def layer_seconds(model: ModelConfig, rows: int, context: int, tp: int, hardware: Hardware,
                  e: int, backward: bool, recompute: str = "none") -> float:
    """One decoder layer over ``rows`` rows (sequences of ``context`` slots) on one
    tensor-parallel rank: forward (and backward, with recomputation's extra forward)."""
    h, d = model.hidden_size, model.kv_channels
    heads = model.num_attention_heads
    qkv = d * (heads + 2 * model.num_query_groups)
    ffn_in = model.ffn_hidden_size * (2 if model.arch == "llama" else 1)  # SwiGLU: gate + up
    shapes = ((h, qkv // tp), (heads * d // tp, h), (h, ffn_in // tp),
              (model.ffn_hidden_size // tp, h))
    attention_forward = 4.0 * rows * context * (heads // tp) * d / hardware.flops_per_second

    def forward_only() -> float:
        return sum(_linear_seconds(rows, k, n, hardware, e, False) for k, n in shapes) \
            + attention_forward

    seconds = sum(_linear_seconds(rows, k, n, hardware, e, backward) for k, n in shapes)
    seconds += attention_forward * (3 if backward else 1)
    if backward and recompute == "full":
        seconds += forward_only()
    elif backward and recompute == "selective":
        seconds += attention_forward
    return seconds


def microbatch_compute_seconds(model: ModelConfig, ponder: PonderConfig, seq_length: int,
                               micro_batch_size: int, jacobi: int, tp: int, pp: int,
                               stage: int, recompute: str, hardware: Hardware,
                               e: int) -> List[float]:
    """Compute seconds of each pass of one micro-batch on ``stage`` (forward + backward)."""
    layers = model.num_layers // pp
    last = stage == pp - 1
    seconds = []
    for slots, with_output, graph in forward_passes(ponder, ponder.thoughts, jacobi):
        rows = micro_batch_size * seq_length * slots
        pass_seconds = layers * layer_seconds(model, rows, seq_length * slots, tp, hardware, e,
                                              graph, recompute)
        if last and with_output:
            pass_seconds += _linear_seconds(micro_batch_size * seq_length, model.hidden_size,
                                            math.ceil(model.vocab_size / tp), hardware, e, graph)
        seconds.append(pass_seconds)
    return seconds


def _placement(setup: CommSetup, interconnect: Interconnect) -> Dict[str, tuple]:
    """(inside one node, group members per node) of each group, ranks ordered TP, DP, PP."""
    node = interconnect.gpus_per_node
    tp, dp, pp = setup.tp, setup.dp, setup.pp
    return {
        "tp": (tp <= node, min(tp, node)),
        "dp": (tp * dp <= node, min(dp, max(1, node // tp))),
        "pp": (tp * dp * pp <= node, 1),
    }


def collective_seconds(collective: Collective, setup: CommSetup,
                       interconnect: Interconnect) -> float:
    if collective.group_size <= 1 and collective.operation != "send":
        return 0.0
    inside, per_node = _placement(setup, interconnect).get(collective.group, (False, 1))
    if inside:
        bandwidth, latency = interconnect.nvlink_gbs, interconnect.nvlink_latency_us
    else:
        bandwidth = min(interconnect.nvlink_gbs, per_node * interconnect.network_gbs)
        latency = interconnect.network_latency_us
    return collective.calls * latency * 1e-6 + collective.sent_bytes / (bandwidth * 1e9)


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step and where they go (the worst pipeline stage)."""

    compute: float          # matmuls and attention, all micro-batches and passes
    tensor_parallel: float  # exposed tensor-parallel collectives
    bubble: float           # fraction of the pipelined part idle
    pipeline: float         # exposed pipeline messages
    gradients: float        # exposed gradient reduction (data parallel, replicated params)
    parameters: float       # exposed parameter all-gather
    optimizer: float
    stage: int = 0

    @property
    def total(self) -> float:
        return ((self.compute + self.tensor_parallel) / (1.0 - self.bubble) + self.pipeline
                + self.gradients + self.parameters + self.optimizer)

    @property
    def communication(self) -> float:
        return (self.tensor_parallel / (1.0 - self.bubble) + self.pipeline + self.gradients
                + self.parameters)

    @property
    def communication_share(self) -> float:
        return self.communication / self.total


def stage_step_time(setup: CommSetup, jacobi_choices: Sequence[int], hardware: Hardware,
                    bubble: float, overlap_param_gather: bool = False,
                    pipeline_overlap: Optional[bool] = None) -> StepTime:
    """The step on ``setup.stage``: compute and exposed communication."""
    e = setup.activation_bytes
    m = setup.num_microbatches
    per_pass = [microbatch_compute_seconds(setup.model, setup.ponder, setup.seq_length,
                                           setup.micro_batch_size, jacobi, setup.tp, setup.pp,
                                           setup.stage, setup.recompute, hardware, e)
                for jacobi in jacobi_choices]
    compute = m * sum(sum(passes) for passes in per_pass) / len(per_pass)
    collectives = step_collectives(setup, jacobi_choices=jacobi_choices)
    seconds = {phase: 0.0 for phase in ("unit", "pipeline", "gradients", "parameters")}
    pipeline_calls = 0.0
    for collective in collectives:
        if collective.phase in seconds:
            seconds[collective.phase] += collective_seconds(collective, setup,
                                                            hardware.interconnect)
        if collective.phase == "pipeline":
            pipeline_calls += collective.calls
    pipeline = seconds["pipeline"]
    overlapped = (setup.ponder.thoughts > 0) if pipeline_overlap is None else pipeline_overlap
    if pipeline_calls and overlapped:  # only the fill and drain stay exposed
        pipeline *= min(1.0, 2 * (setup.pp - 1) / pipeline_calls)
    gradients = seconds["gradients"]
    if setup.overlap_grad_reduce:
        # Gradients are complete only in the backward of the last micro-batch's pass 0 (all of
        # its backward for K = 0): roughly 2/3 of that pass's compute hides the reduction.
        window = (2.0 / 3.0) * min(passes[0] for passes in per_pass)
        buckets = max(c.calls for c in collectives if c.phase == "gradients")
        gradients = max(gradients - window, gradients / buckets)
    parameters = seconds["parameters"]
    if overlap_param_gather and parameters:
        buckets = max(c.calls for c in collectives if c.phase == "parameters")
        parameters /= buckets
    params = stage_parameters(setup.model, setup.tp, setup.pp, setup.stage, setup.ponder)
    shard = params / setup.dp if setup.distributed_optimizer else params
    optimizer = shard * OPTIMIZER_BYTES_PER_PARAMETER / hardware.bytes_per_second
    return StepTime(compute, seconds["unit"], bubble, pipeline, gradients, parameters,
                    optimizer, setup.stage)


def step_time(setup: CommSetup, jacobi_choices: Sequence[int], hardware: Hardware,
              bubble: float, overlap_param_gather: bool = False,
              pipeline_overlap: Optional[bool] = None) -> StepTime:
    """The slowest stage's step (every stage waits for it)."""
    return max((stage_step_time(replace(setup, stage=stage), jacobi_choices, hardware, bubble,
                                overlap_param_gather, pipeline_overlap)
                for stage in range(setup.pp)), key=lambda time: time.total)
