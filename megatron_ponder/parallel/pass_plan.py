"""Which pass of a micro-batch runs in which virtual pipeline chunk.

Under pipeline parallelism every pass of a micro-batch's ``PassPlan`` (``model/ponder.py``) is
one virtual chunk of megatron's interleaved schedule (see ``pipeline.py``), and the schedule needs
the same number of chunks for every micro-batch of a step. With J drawn per micro-batch, the step
runs ``K + max(J) + 1`` chunks; a micro-batch with a smaller J fills the difference with
*pass-through* chunks that forward the hidden state unchanged (no layer runs, each stage just
hands the tensor on). They sit right after the growth passes, so for every micro-batch

    chunk 0 .. K-1           growth passes (1 .. K slots per token)
    then max(J) - J          pass-throughs carrying the last growth output
    then J                   Jacobi passes (K+1 slots)
    chunk K + max(J)         the final pass (K+1 slots): output layer and loss

The final pass is always the last chunk, which is where megatron's schedule computes the loss.
Every rank of a pipeline derives the same J list from (seed, iteration, micro-batch index), so
all stages agree on the plan without communicating.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megatron_ponder.model.ponder import PassPlan


def num_chunks(num_latent_thoughts: int, jacobi_per_microbatch: Sequence[int]) -> int:
    """Virtual chunks one step needs: the passes of its longest micro-batch."""
    if not jacobi_per_microbatch:
        raise ValueError("a step needs at least one micro-batch")
    return max(len(PassPlan(num_latent_thoughts, j).slots) for j in jacobi_per_microbatch)


@dataclass(frozen=True)
class ChunkPlan:
    """The passes of one micro-batch laid out on the step's chunks: ``pass_in_chunk[c]`` is the
    index in ``passes`` of the pass chunk ``c`` runs, or None for a pass-through chunk."""

    passes: PassPlan
    pass_in_chunk: Tuple[Optional[int], ...]

    @classmethod
    def build(cls, passes: PassPlan, chunks: int) -> "ChunkPlan":
        padding = chunks - len(passes.slots)
        if padding < 0:
            raise ValueError(f"{len(passes.slots)} passes (K={passes.num_latent_thoughts}, "
                             f"J={passes.jacobi_iterations}) do not fit in {chunks} chunks")
        growth = passes.num_latent_thoughts
        return cls(passes, tuple(range(growth)) + (None,) * padding
                   + tuple(range(growth, len(passes.slots))))


def plan_step(num_latent_thoughts: int, jacobi_per_microbatch: Sequence[int]) -> List[ChunkPlan]:
    """The plan of every micro-batch of one step (all with the same number of chunks)."""
    chunks = num_chunks(num_latent_thoughts, jacobi_per_microbatch)
    return [ChunkPlan.build(PassPlan(num_latent_thoughts, j), chunks)
            for j in jacobi_per_microbatch]
