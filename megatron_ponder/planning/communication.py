"""The collectives and point-to-point messages one rank makes in one training step, as
megatron-core 0.16 and this project's trainer issue them.

Every entry is a ``Collective``: the group (``tp``, ``pp``, ``dp``, ``mp`` = tensor x pipeline,
``world``), the operation, the group size, the number of calls and their summed *payload*: the
full tensor of an all-reduce, the gathered output of an all-gather, the input of a
reduce-scatter, the message of a send. ``sent_bytes`` converts a payload into the bytes one rank
puts on the wire with ring algorithms (NCCL's default for large messages): an all-gather or a
reduce-scatter sends (n-1)/n of its payload, an all-reduce twice that, a broadcast (n-1)/n on
average per rank, a send its message. ``--validate`` holds these numbers against the payloads
counted in real CPU runs (``communication_measured.py``).

What one step issues on a rank of pipeline stage ``stage`` (R = micro-batch x sequence x slots
rows of one pass, h the hidden size, e the activation bytes, t the tensor-parallel size):

* **tensor parallel, sequence parallel on** (the planner's default): each decoder layer has two
  column-parallel linears (QKV, fc1) and two row-parallel ones (attention projection, fc2).
  Forward: an all-gather of the [R, h] input before each column-parallel linear and a
  reduce-scatter after each row-parallel one. Backward: megatron re-gathers each
  column-parallel input (it saved the shard) and reduce-scatters its input gradient; each
  row-parallel output gradient is all-gathered. So per layer and pass 2 + 4 all-gathers and
  2 + 2 reduce-scatters of R h e bytes, each pass with its own slot count; full recomputation
  repeats the forward's. Passes outside ``--ponder-grad-passes`` run the forward only. The
  embedding (stage 0, once per micro-batch: later passes splice the same embeddings)
  reduce-scatters forward and all-gathers backward; the output layer (last stage, final pass,
  the L slot-K rows) all-gathers forward and all-gathers + reduce-scatters backward; the
  vocabulary-parallel cross entropy all-reduces three fp32 values per token. After backward one
  all-reduce of the replicated parameters' gradients (norms, row-parallel biases), in the
  gradient buffer's dtype.
* **tensor parallel without sequence parallelism**: an all-reduce after each row-parallel
  linear forward and of each column-parallel input gradient backward (2 + 2 per layer and pass,
  plus 2 per recomputed forward); the embedding all-reduces forward, the output layer's input
  gradient is all-reduced.
* **pipeline parallel**: every pass of every micro-batch is a virtual chunk (``pipeline.py``);
  every (micro-batch, chunk) unit sends its output forward except the final pass on the last
  stage, and its input gradient backward except pass 0 on stage 0. Messages are padded to
  (K+1) L rows (divided by t under sequence parallelism). A step runs K + max(J) + 1 chunks
  (the longest micro-batch; shorter ones pass through).
* **data parallel**: megatron DDP reduces the gradient buffer (fp32, or bf16 with
  ``--grad-reduce-in-bf16``) once per step per bucket: a reduce-scatter with the distributed
  optimizer (the buffer padded to a multiple of lcm(DP, 128) elements), else an all-reduce;
  the distributed optimizer then all-gathers the updated parameters (in their dtype). One
  bucket without overlap; ``max(40M, 1M x DP)`` parameters per bucket with
  ``--overlap-grad-reduce``.
* **control scalars**: the token count (int32, broadcast over the pipeline and all-reduced over
  data parallel), the reported loss (two fp64, data parallel, last stage), the gradient norm
  (fp32, over tensor x pipeline, or over all ranks with the distributed optimizer) and the NaN
  check (two fp32 over all ranks, unless
  ``--no-check-for-nan-in-loss-and-grad``).
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.parallel.chunk_plan import expected_num_chunks, num_chunks
from megatron_ponder.planning.memory import stage_parameters
from megatron_ponder.training.flops import forward_passes

OPERATIONS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast", "send")
# Where a collective sits in a step, for the time model: inside a (micro-batch, pass) unit,
# between stages, after the backward (gradients), after the optimizer step (parameters), or a
# scalar of the trainer's.
PHASES = ("unit", "pipeline", "gradients", "parameters", "control")
CROSS_ENTROPY_VALUES_PER_TOKEN = 3  # max logit, sum of exponentials, target logit (fp32)


def sent_fraction(operation: str, group_size: int) -> float:
    """Bytes one rank sends per payload byte with ring algorithms."""
    n = group_size
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; choose one of {OPERATIONS}")
    if operation == "send":
        return 1.0
    if n <= 1:
        return 0.0
    return (2.0 if operation == "all_reduce" else 1.0) * (n - 1) / n


@dataclass(frozen=True)
class Collective:
    group: str
    operation: str
    group_size: int
    calls: float
    payload_bytes: float
    phase: str = "unit"

    @property
    def sent_bytes(self) -> float:
        return self.payload_bytes * sent_fraction(self.operation, self.group_size)

    @property
    def kind(self) -> Tuple[str, str]:
        return self.group, self.operation


@dataclass(frozen=True)
class CommSetup:
    """One rank's step: the layout, the stage, and the dtypes and options that set message
    sizes. ``model.vocab_size`` is the padded vocabulary."""

    model: ModelConfig
    ponder: PonderConfig
    seq_length: int
    micro_batch_size: int
    num_microbatches: int
    tp: int = 1
    pp: int = 1
    dp: int = 1
    stage: int = 0
    sequence_parallel: bool = True
    recompute: str = "none"
    distributed_optimizer: bool = True
    activation_bytes: int = 2
    grad_bytes: int = 4
    param_bytes: int = 2
    overlap_grad_reduce: bool = False
    check_for_nan: bool = True
    split_pipeline_messages: bool = False  # each TP rank sends 1/t (Megatron-LM's scatter/gather)

    @property
    def sequence_parallel_on(self) -> bool:
        return self.sequence_parallel and self.tp > 1


class _Tally:
    """Collectives summed by (group, operation, group size, phase)."""

    def __init__(self):
        self.calls: Dict[tuple, float] = defaultdict(float)
        self.payload: Dict[tuple, float] = defaultdict(float)

    def add(self, group: str, operation: str, size: int, calls: float, payload_per_call: float,
            phase: str = "unit") -> None:
        if calls <= 0:
            return
        key = (group, operation, size, phase)
        self.calls[key] += calls
        self.payload[key] += calls * payload_per_call

    def collectives(self) -> List[Collective]:
        return [Collective(g, op, n, self.calls[key], self.payload[key], phase)
                for key in sorted(self.calls) for g, op, n, phase in [key]]


def _layer_collectives(tally: _Tally, setup: CommSetup, rows: int, layers: int, graph: bool,
                       weight: float) -> None:
    """``layers`` decoder layers over ``rows`` rows in one pass (``weight`` of them)."""
    t = setup.tp
    if t == 1:
        return
    size = rows * setup.model.hidden_size * setup.activation_bytes
    forwards = 1 + (1 if graph and setup.recompute == "full" else 0)
    if setup.sequence_parallel_on:
        gathers = 2 * forwards + (4 if graph else 0)
        scatters = 2 * forwards + (2 if graph else 0)
        tally.add("tp", "all_gather", t, weight * layers * gathers, size)
        tally.add("tp", "reduce_scatter", t, weight * layers * scatters, size)
    else:
        reduces = 2 * forwards + (2 if graph else 0)
        tally.add("tp", "all_reduce", t, weight * layers * reduces, size)


def _microbatch_collectives(tally: _Tally, setup: CommSetup, jacobi: int, weight: float) -> None:
    """Tensor-parallel traffic of one micro-batch (all its passes) on the stage."""
    model, t = setup.model, setup.tp
    first, last = setup.stage == 0, setup.stage == setup.pp - 1
    layers = model.num_layers // setup.pp
    tokens = setup.micro_batch_size * setup.seq_length
    passes = forward_passes(setup.ponder, setup.ponder.thoughts, jacobi)
    for slots, _, graph in passes:
        _layer_collectives(tally, setup, tokens * slots, layers, graph, weight)
    if t == 1:
        return
    row = tokens * model.hidden_size * setup.activation_bytes
    final_graph = passes[-1][2]
    if first:  # the embedding's gradient comes from every pass that keeps a graph
        if setup.sequence_parallel_on:
            tally.add("tp", "reduce_scatter", t, weight, row)
            tally.add("tp", "all_gather", t, weight if any(g for _, _, g in passes) else 0, row)
        else:
            tally.add("tp", "all_reduce", t, weight, row)
    if last:
        if setup.sequence_parallel_on:
            tally.add("tp", "all_gather", t, weight * (2 if final_graph else 1), row)
            tally.add("tp", "reduce_scatter", t, weight if final_graph else 0, row)
        else:
            tally.add("tp", "all_reduce", t, weight if final_graph else 0, row)
        tally.add("tp", "all_reduce", t, weight * CROSS_ENTROPY_VALUES_PER_TOKEN, tokens * 4)


def pipeline_sends(setup: CommSetup, chunks: float) -> Tuple[float, float]:
    """(sends per step, bytes per message) of the stage's point-to-point traffic."""
    if setup.pp == 1:
        return 0.0, 0.0
    units = setup.num_microbatches * chunks
    m = setup.num_microbatches
    forward = units - (m if setup.stage == setup.pp - 1 else 0)
    backward = units - (m if setup.stage == 0 else 0)
    widest = max(step.slots for step in setup.ponder.method.passes(setup.ponder.thoughts, 0))
    rows = widest * setup.seq_length * setup.micro_batch_size
    if setup.sequence_parallel_on or setup.split_pipeline_messages:
        rows //= setup.tp
    return forward + backward, rows * setup.model.hidden_size * setup.activation_bytes


def replicated_parameters(model: ModelConfig, layers: int, last_stage: bool) -> int:
    """Parameters every tensor-parallel rank holds whole (norms; row-parallel biases of
    GPT-NeoX) on a stage with ``layers`` layers: their gradients are all-reduced over TP under
    sequence parallelism."""
    h = model.hidden_size
    neox = model.arch == "gpt_neox"
    per_layer = (2 * 2 * h + 2 * h) if neox else 2 * h
    return layers * per_layer + ((2 * h if neox else h) if last_stage else 0)


def gradient_buffer_elements(setup: CommSetup) -> int:
    """Elements of the stage's DDP gradient buffer (parameters, padded for the distributed
    optimizer; every parameter is assumed to be a multiple of 64 elements, so only the
    buffer's end is padded)."""
    params = stage_parameters(setup.model, setup.tp, setup.pp, setup.stage, setup.ponder)
    if setup.distributed_optimizer:
        divisor = math.lcm(setup.dp, 128)
        params = math.ceil(params / divisor) * divisor
    return params


def bucket_count(setup: CommSetup, elements: int) -> int:
    if not setup.overlap_grad_reduce:
        return 1
    return max(1, math.ceil(elements / max(40_000_000, 1_000_000 * setup.dp)))


def step_collectives(setup: CommSetup, jacobi_per_microbatch: Optional[Sequence[int]] = None,
                     jacobi_choices: Optional[Sequence[int]] = None) -> List[Collective]:
    """Every collective and send of one training step on one rank of ``setup.stage``.

    Give the J of each micro-batch (a measured step), or the choices J is drawn from (a plan:
    expected values, so calls may be fractional)."""
    if (jacobi_per_microbatch is None) == (jacobi_choices is None):
        raise ValueError("give jacobi_per_microbatch or jacobi_choices")
    if setup.model.num_layers % setup.pp:
        raise ValueError(f"--num-layers {setup.model.num_layers} is not divisible by the "
                         f"pipeline size {setup.pp}")
    tally = _Tally()
    m = setup.num_microbatches
    k = setup.ponder.thoughts
    if jacobi_per_microbatch is not None:
        if len(jacobi_per_microbatch) != m:
            raise ValueError(f"{len(jacobi_per_microbatch)} J values for {m} micro-batches")
        for jacobi in jacobi_per_microbatch:
            _microbatch_collectives(tally, setup, jacobi, 1.0)
        chunks = float(num_chunks(setup.ponder.method, k, jacobi_per_microbatch))
    else:
        for jacobi in jacobi_choices:
            _microbatch_collectives(tally, setup, jacobi, m / len(jacobi_choices))
        chunks = expected_num_chunks(setup.ponder.method, k, jacobi_choices, m)
    last = setup.stage == setup.pp - 1
    layers = setup.model.num_layers // setup.pp
    if setup.sequence_parallel_on:
        tally.add("tp", "all_reduce", setup.tp, 1,
                  replicated_parameters(setup.model, layers, last) * setup.grad_bytes,
                  "gradients")
    sends, message = pipeline_sends(setup, chunks)
    tally.add("pp", "send", setup.pp, sends, message, "pipeline")
    elements = gradient_buffer_elements(setup)
    buckets = bucket_count(setup, elements)
    if setup.distributed_optimizer:
        tally.add("dp", "reduce_scatter", setup.dp, buckets, elements * setup.grad_bytes / buckets,
                  "gradients")
        tally.add("dp", "all_gather", setup.dp, buckets, elements * setup.param_bytes / buckets,
                  "parameters")
    else:
        tally.add("dp", "all_reduce", setup.dp, buckets, elements * setup.grad_bytes / buckets,
                  "gradients")
    tally.add("pp", "broadcast", setup.pp, 1, 4, "control")          # token count
    tally.add("dp", "all_reduce", setup.dp, 1, 4, "control")
    tally.add("dp", "all_reduce", setup.dp, 1 if last else 0, 16, "control")  # reported loss
    world = setup.tp * setup.pp * setup.dp
    # The gradient norm: over the model-parallel ranks, or over all ranks when the distributed
    # optimizer has sharded the gradients over data parallel too.
    if setup.distributed_optimizer:
        tally.add("world", "all_reduce", world, 1, 4, "control")
    else:
        tally.add("mp", "all_reduce", setup.tp * setup.pp, 1, 4, "control")
    tally.add("world", "all_reduce", world, 1 if setup.check_for_nan else 0, 8, "control")
    return tally.collectives()


def sent_by_kind(collectives: Sequence[Collective],
                 what: str = "sent_bytes") -> Dict[Tuple[str, str], float]:
    """Bytes sent (or ``what``: "calls", "payload_bytes") per (group, operation), groups of one
    rank left out."""
    totals: Dict[Tuple[str, str], float] = defaultdict(float)
    for collective in collectives:
        if collective.group_size > 1 or collective.operation == "send":
            totals[collective.kind] += getattr(collective, what)
    return dict(totals)
