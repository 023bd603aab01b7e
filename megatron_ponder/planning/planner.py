"""Plan a PonderLM-2 training run: FLOPs, per-GPU memory of candidate layouts, and the layouts
that fit ranked by modelled step time, with the communication share of each, the wall time and
GPU-hours of the whole run.

FLOPs come from ``megatron_ponder.training.flops`` (all passes, forward and backward; J
averaged over the ``--random-jacobi-iterations`` recipe). Memory comes from
``megatron_ponder.planning.memory`` with the largest J (the worst micro-batch). Step time comes
from ``megatron_ponder.planning.timing``: every matmul on its per-GPU shape at the assumed
efficiency (``--mfu``), lowered for small shapes; the collectives and pipeline messages of
``megatron_ponder.planning.communication`` on the cluster's topology (``--gpus-per-node``,
NVLink and network bandwidth); the pass-interleaved pipeline bubble (P - 1) / (V M + P - 1)
with V = passes per micro-batch (each pass is a virtual stage, ``parallel/bubble.py``) and M
micro-batches per step; what overlaps and what does not; and the optimizer step streaming its
state through memory once. Tensor parallelism is planned with sequence parallelism, data
parallelism with the distributed optimizer (megatron's ``--use-distributed-optimizer``).
"""

import math
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.parallel.bubble import interleaved_idle_fraction
from megatron_ponder.parallel.chunk_plan import expected_num_chunks
from megatron_ponder.tokenizer.base import padded_vocab_size
from megatron_ponder.planning.communication import CommSetup
from megatron_ponder.planning.hardware import DEFAULT_INTERCONNECT, GPUSpec, Interconnect
from megatron_ponder.planning.memory import (
    RECOMPUTE_SETTINGS, ActivationSetup, activation_bytes, model_state_bytes, stage_parameters,
)
from megatron_ponder.planning.timing import Hardware, StepTime, step_time
from megatron_ponder.training.flops import forward_passes, layer_weight_macs_per_slot, \
    parameter_count, pass_flops, step_flops

GIB = 2 ** 30


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    recompute: str

    def describe(self) -> str:
        return (f"TP={self.tp} PP={self.pp} DP={self.dp} mbs={self.micro_batch_size} "
                f"recompute={self.recompute}")


@dataclass
class PlanRequest:
    model: ModelConfig
    ponder: PonderConfig
    seq_length: int
    global_batch_size: int
    train_tokens: float
    gpus: int
    gpu: GPUSpec
    mfu: float = 0.5
    mixed_precision: bool = True
    distributed_optimizer: bool = True
    interconnect: Interconnect = DEFAULT_INTERCONNECT
    overlap_grad_reduce: bool = False   # GPU training overlaps for K = 0 or a fixed J
    overlap_param_gather: bool = False
    grad_reduce_in_bf16: bool = False
    reserve_gib: float = 4.0
    max_tensor_parallel: int = 8
    max_pipeline_parallel: int = 16
    micro_batch_sizes: Sequence[int] = (1, 2, 4, 8, 16)
    recompute_settings: Sequence[str] = RECOMPUTE_SETTINGS

    def __post_init__(self):
        checks = (
            (self.seq_length >= 1, f"--seq-length must be >= 1, got {self.seq_length}"),
            (self.global_batch_size >= 1,
             f"--global-batch-size must be >= 1, got {self.global_batch_size}"),
            (self.train_tokens > 0, f"--train-tokens must be > 0, got {self.train_tokens}"),
            (self.gpus >= 1, f"--gpus must be >= 1, got {self.gpus}"),
            (0 < self.mfu <= 1, f"--mfu must be in (0, 1], got {self.mfu}"),
            (self.reserve_gib >= 0, f"--memory-reserve-gib must be >= 0, got "
                                    f"{self.reserve_gib}"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        unknown = set(self.recompute_settings) - set(RECOMPUTE_SETTINGS)
        if unknown:
            raise ValueError(f"unknown recompute setting(s) {sorted(unknown)}; choose from "
                             f"{RECOMPUTE_SETTINGS}")

    @property
    def jacobi_choices(self) -> Tuple[int, ...]:
        return tuple(self.ponder.random_jacobi_iterations) or (self.ponder.jacobi_iterations,)


# ------------------------------------------------------------------------------ FLOPs
def flops_per_token(model: ModelConfig, ponder: PonderConfig, seq_length: int,
                    jacobi_choices: Sequence[int]) -> float:
    """Training FLOPs per token over all passes, J averaged over ``jacobi_choices``."""
    total = sum(step_flops(model, ponder, seq_length, 1, [j]) for j in jacobi_choices)
    return total / len(jacobi_choices) / seq_length


def vanilla_flops_per_token(model: ModelConfig, seq_length: int) -> float:
    return step_flops(model, PonderConfig(num_latent_thoughts=0), seq_length, 1, [0]) \
        / seq_length


def recompute_flops_per_token(model: ModelConfig, ponder: PonderConfig, seq_length: int,
                              jacobi_choices: Sequence[int], recompute: str) -> float:
    """Extra (hardware, not model) FLOPs per token that recomputation adds."""
    if recompute == "none":
        return 0.0
    total = 0.0
    for jacobi in jacobi_choices:
        for slots, _, graph in forward_passes(ponder, ponder.thoughts, jacobi):
            if not graph:
                continue
            layers_forward = pass_flops(model, seq_length, slots, False, with_backward=False)
            if recompute == "full":
                total += layers_forward
            else:  # the attention scores and values: the layers' forward minus the weights
                weights = 2 * layer_weight_macs_per_slot(model) * seq_length * slots
                total += layers_forward - model.num_layers * weights
    return total / len(jacobi_choices) / seq_length


# ------------------------------------------------------------------------------ layouts
@dataclass
class LayoutPlan:
    layout: Layout
    num_microbatches: int
    passes: int
    parameters: int
    weight_gib: float
    grad_gib: float
    optimizer_gib: float
    activation_gib: float
    total_gib: float
    fits: bool
    bubble: float
    time: StepTime
    model_flops_utilization: float = 0.0
    stage: int = 0

    @property
    def step_seconds(self) -> float:
        return self.time.total


def candidate_layouts(request: PlanRequest) -> List[Layout]:
    model = request.model
    layouts = []
    for tp in (1, 2, 4, 8, 16):
        if tp > request.max_tensor_parallel or request.gpus % tp:
            continue
        if (model.num_attention_heads % tp or model.ffn_hidden_size % tp
                or (model.num_query_groups % tp and tp % model.num_query_groups)
                or request.seq_length % tp):
            continue
        for pp in range(1, min(request.max_pipeline_parallel, model.num_layers) + 1):
            if model.num_layers % pp or request.gpus % (tp * pp):
                continue
            dp = request.gpus // (tp * pp)
            for mbs in request.micro_batch_sizes:
                if request.global_batch_size % (mbs * dp):
                    continue
                microbatches = request.global_batch_size // (mbs * dp)
                if pp > 1 and microbatches % pp:
                    continue
                for recompute in request.recompute_settings:
                    layouts.append(Layout(tp, pp, dp, mbs, recompute))
    return layouts


def plan_layout(request: PlanRequest, layout: Layout) -> LayoutPlan:
    model = replace(request.model, vocab_size=padded_vocab_size(request.model.vocab_size, layout.tp))
    ponder = request.ponder
    choices = request.jacobi_choices
    microbatches = request.global_batch_size // (layout.micro_batch_size * layout.dp)
    setup = ActivationSetup(
        micro_batch_size=layout.micro_batch_size, seq_length=request.seq_length, tp=layout.tp,
        sequence_parallel=layout.tp > 1, recompute=layout.recompute,
        dtype_bytes=2 if request.mixed_precision else 4)
    worst = None
    for stage in range(layout.pp):
        params = stage_parameters(model, layout.tp, layout.pp, stage, ponder)
        state = model_state_bytes(params, request.mixed_precision, layout.dp,
                                  request.distributed_optimizer)
        acts = activation_bytes(model, ponder, setup, max(choices), layout.pp, stage,
                                microbatches).total
        total = state.total + acts + request.reserve_gib * GIB
        if worst is None or total > worst[0]:
            worst = (total, stage, params, state, acts)
    total, stage, params, state, acts = worst
    passes = len(forward_passes(ponder, ponder.thoughts, max(choices)))
    chunks = expected_num_chunks(ponder.method, ponder.thoughts, choices, microbatches)
    bubble = interleaved_idle_fraction(layout.pp, microbatches, chunks) if layout.pp > 1 \
        else 0.0
    e = 2 if request.mixed_precision else 4
    setup = CommSetup(
        model=model, ponder=ponder, seq_length=request.seq_length,
        micro_batch_size=layout.micro_batch_size, num_microbatches=microbatches, tp=layout.tp,
        pp=layout.pp, dp=layout.dp, sequence_parallel=True, recompute=layout.recompute,
        distributed_optimizer=request.distributed_optimizer, activation_bytes=e,
        grad_bytes=2 if request.grad_reduce_in_bf16 else 4, param_bytes=e,
        overlap_grad_reduce=request.overlap_grad_reduce)
    hardware = Hardware(request.gpu, request.interconnect, request.mfu)
    time = step_time(setup, choices, hardware, bubble, request.overlap_param_gather)
    tokens = request.global_batch_size * request.seq_length
    model_flops = tokens * flops_per_token(model, ponder, request.seq_length, choices)
    mfu = model_flops / (time.total * request.gpus * request.gpu.peak_bf16_tflops * 1e12)
    return LayoutPlan(
        layout=layout, num_microbatches=microbatches, passes=passes, parameters=params,
        weight_gib=state.weight_bytes / GIB, grad_gib=state.grad_bytes / GIB,
        optimizer_gib=state.optimizer_bytes / GIB, activation_gib=acts / GIB,
        total_gib=total / GIB, fits=total <= request.gpu.memory_gib * GIB, bubble=bubble,
        time=time, model_flops_utilization=mfu, stage=stage)


@dataclass
class Plan:
    request: PlanRequest
    flops_per_token: float
    vanilla_flops_per_token: float
    steps: int
    layouts: List[LayoutPlan] = field(default_factory=list)

    @property
    def fitting(self) -> List[LayoutPlan]:
        return sorted((p for p in self.layouts if p.fits),
                      key=lambda p: (p.step_seconds, p.total_gib))


def make_plan(request: PlanRequest) -> Plan:
    model, ponder = request.model, request.ponder
    layouts = candidate_layouts(request)
    if not layouts:
        raise ValueError(f"no layout of {request.gpus} GPUs divides the model (heads "
                         f"{model.num_attention_heads}, layers {model.num_layers}) and global "
                         f"batch {request.global_batch_size}")
    tokens_per_step = request.global_batch_size * request.seq_length
    plan = Plan(request,
                flops_per_token(model, ponder, request.seq_length, request.jacobi_choices),
                vanilla_flops_per_token(model, request.seq_length),
                math.ceil(request.train_tokens / tokens_per_step))
    plan.layouts = [plan_layout(request, layout) for layout in layouts]
    return plan


def _duration(seconds: float) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{int(days)}d {rest / 3600:4.1f}h" if days else f"{seconds / 3600:.1f}h"


def _split(time: StepTime) -> str:
    tensor = time.tensor_parallel / (1.0 - time.bubble)
    data = time.gradients + time.parameters
    return f"{tensor:.2f}/{time.pipeline:.2f}/{data:.2f}"


def format_plan(plan: Plan, top: int = 10) -> str:
    request, model, ponder = plan.request, plan.request.model, plan.request.ponder
    choices = request.jacobi_choices
    j_text = (f"J drawn from {{{','.join(map(str, choices))}}} (mean {sum(choices) / len(choices):g},"
              f" memory at J={max(choices)})" if len(choices) > 1 else f"J={choices[0]}")
    grad = (f", ponder-grad-passes {ponder.ponder_grad_passes}"
            if ponder.ponder_grad_passes else "")
    lines = [
        f"model: {model.arch}, {model.num_layers} layers, H={model.hidden_size}, "
        f"{model.num_attention_heads} heads, FFN {model.ffn_hidden_size}, vocab "
        f"{model.vocab_size}, {parameter_count(model):,}"
        f" parameters",
        f"ponder: K={ponder.thoughts}, {j_text}{grad}; seq {request.seq_length}, global batch "
        f"{request.global_batch_size} ({request.global_batch_size * request.seq_length:,} "
        f"tokens/step)",
        f"FLOPs/token (training, all passes): {plan.flops_per_token:.4g}; vanilla "
        f"{plan.vanilla_flops_per_token:.4g}; ratio {plan.flops_per_token / plan.vanilla_flops_per_token:.2f}x",
        f"cluster: {request.gpus} x {request.gpu.name} ({request.gpu.memory_gib:g} GiB, "
        f"{request.gpu.peak_bf16_tflops:g} TFLOP/s bf16, {request.gpu.memory_bandwidth_tbs:g} "
        f"TB/s, {request.gpu.sm_count} SMs), assumed matmul efficiency {request.mfu:g}, "
        f"reserve {request.reserve_gib:g} GiB/GPU",
        f"interconnect: {request.interconnect.describe()}; TP with sequence parallelism, "
        f"distributed optimizer, gradient reduction "
        f"{'overlapped' if request.overlap_grad_reduce else 'not overlapped'} "
        f"({'bf16' if request.grad_reduce_in_bf16 else 'fp32'}), parameter all-gather "
        f"{'overlapped' if request.overlap_param_gather else 'not overlapped'}",
        f"run: {request.train_tokens:.4g} tokens = {plan.steps:,} steps; total "
        f"{plan.flops_per_token * request.train_tokens:.3g} FLOPs",
    ]
    fitting = plan.fitting
    lines.append(f"layouts: {len(plan.layouts)} candidates, {len(fitting)} fit in "
                 f"{request.gpu.memory_gib:g} GiB")
    header = (f"{'#':>3} {'TP':>2} {'PP':>2} {'DP':>4} {'mbs':>3} {'M':>4} {'recompute':>9} "
              f"{'weights':>7} {'grads':>6} {'optim':>6} {'activ':>7} {'total':>7} "
              f"{'bubble':>6} {'comm':>5} {'TP/PP/DP s':>16} {'MFU':>5} {'step s':>7} "
              f"{'wall':>10} {'GPU-h':>9}")
    lines.append("per-GPU GiB (worst stage); comm = exposed communication's share of the step, "
                 "split into tensor-parallel / pipeline / data-parallel seconds; MFU = model "
                 "FLOPs / (GPUs x peak x step)")
    lines.append(header)
    for rank, p in enumerate(fitting[:top], 1):
        wall = p.step_seconds * plan.steps
        lines.append(
            f"{rank:>3} {p.layout.tp:>2} {p.layout.pp:>2} {p.layout.dp:>4} "
            f"{p.layout.micro_batch_size:>3} {p.num_microbatches:>4} {p.layout.recompute:>9} "
            f"{p.weight_gib:7.2f} {p.grad_gib:6.2f} {p.optimizer_gib:6.2f} "
            f"{p.activation_gib:7.2f} {p.total_gib:7.2f} {100 * p.bubble:5.1f}% "
            f"{100 * p.time.communication_share:4.1f}% {_split(p.time):>16} "
            f"{100 * p.model_flops_utilization:4.1f}% "
            f"{p.step_seconds:7.3f} {_duration(wall):>10} {wall * request.gpus / 3600:9.0f}")
    if not fitting:
        smallest = min(plan.layouts, key=lambda p: p.total_gib)
        lines.append(f"nothing fits; the smallest layout ({smallest.layout.describe()}) needs "
                     f"{smallest.total_gib:.1f} GiB per GPU")
    return "\n".join(lines)
