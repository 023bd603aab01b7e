"""Which pass of a micro-batch runs in which virtual pipeline chunk.

Under pipeline parallelism every pass of a micro-batch's ``PassPlan`` (built by the method
registry, ``megatron_ponder.methods``) is one virtual chunk of megatron's interleaved schedule
(see ``pipeline.py``), and the schedule needs the same number of chunks for every micro-batch
of a step. With J drawn per micro-batch, a step runs as many chunks as its longest micro-batch
has passes; a micro-batch with a smaller J fills the difference with *pass-through* chunks that
forward the hidden state unchanged (no layer runs, each stage just hands the tensor on). They
sit right before the Jacobi passes, so for PonderLM-2 every micro-batch runs

    chunk 0 .. K-1           growth passes (1 .. K slots per token)
    then max(J) - J          pass-throughs carrying the last growth output
    then J                   Jacobi passes (K+1 slots)
    chunk K + max(J)         the final pass (K+1 slots): output layer and loss

The final pass is always the last chunk, which is where megatron's schedule computes the loss.
Methods whose passes do not depend on J (Pause, Loop, K = 0) need no pass-throughs. Every rank
of a pipeline derives the same J list from (seed, iteration, micro-batch index), so all stages
agree on the plan without communicating.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megatron_ponder.methods import Method, PassPlan


@dataclass(frozen=True)
class ChunkPlan:
    """The passes of one micro-batch laid out on the step's chunks: ``pass_in_chunk[c]`` is the
    index in ``passes`` of the pass chunk ``c`` runs, or None for a pass-through chunk."""

    passes: PassPlan
    pass_in_chunk: Tuple[Optional[int], ...]

    @classmethod
    def build(cls, passes: PassPlan, chunks: int) -> "ChunkPlan":
        count = len(passes.passes)
        padding = chunks - count
        if padding < 0:
            raise ValueError(f"{count} passes do not fit in {chunks} chunks")
        start = passes.jacobi_start
        return cls(passes, tuple(range(start)) + (None,) * padding + tuple(range(start, count)))


def plan_step(method: Method, num_latent_thoughts: int, jacobi_per_microbatch: Sequence[int],
              grad_passes: Optional[int] = None) -> List[ChunkPlan]:
    """The plan of every micro-batch of one step (all with the same number of chunks)."""
    if not jacobi_per_microbatch:
        raise ValueError("a step needs at least one micro-batch")
    plans = [method.plan(num_latent_thoughts, j, grad_passes=grad_passes)
             for j in jacobi_per_microbatch]
    chunks = max(len(plan.passes) for plan in plans)
    return [ChunkPlan.build(plan, chunks) for plan in plans]


def num_chunks(method: Method, num_latent_thoughts: int,
               jacobi_per_microbatch: Sequence[int]) -> int:
    """Virtual chunks one step needs: the passes of its longest micro-batch."""
    return len(plan_step(method, num_latent_thoughts, jacobi_per_microbatch)[0].pass_in_chunk)


def expected_max(choices: Sequence[int], draws: int) -> float:
    """Expected maximum of ``draws`` values drawn uniformly from ``choices``."""
    values = sorted(set(choices))
    n = len(choices)
    expected, below = 0.0, 0.0
    for value in values:
        at_most = (sum(1 for c in choices if c <= value) / n) ** draws
        expected += value * (at_most - below)
        below = at_most
    return expected


def expected_num_chunks(method: Method, num_latent_thoughts: int,
                        jacobi_choices: Sequence[int], num_microbatches: int) -> float:
    """Expected chunks of a step of ``num_microbatches`` micro-batches, each drawing J
    uniformly from ``jacobi_choices`` (every Jacobi pass adds one chunk)."""
    fixed = len(method.passes(num_latent_thoughts, 0))
    if not method.draws_jacobi(num_latent_thoughts):
        return float(fixed)
    return fixed + expected_max(jacobi_choices, num_microbatches)
