"""Which pass of a micro-batch runs in which virtual pipeline chunk.

Under pipeline parallelism every pass is one virtual chunk of megatron's interleaved schedule
(see ``pipeline.py``), and the schedule needs the same number of chunks for every micro-batch of
a step. With J drawn per micro-batch, the step runs ``K + max(J) + 1`` chunks; a micro-batch with
a smaller J fills the difference with *pass-through* chunks that forward the hidden state
unchanged (no layer runs, each stage just hands the tensor on). They sit right after the growth
passes, so for every micro-batch

    chunk 0 .. K-1           growth passes (1 .. K slots per token)
    then max(J) - J          pass-throughs carrying the last growth output
    then J                   Jacobi passes (K+1 slots)
    chunk K + max(J)         the final pass (K+1 slots): output layer and loss

The final pass is always the last chunk, which is where megatron's schedule computes the loss.
Every rank of a pipeline derives the same J list from (seed, iteration, micro-batch index), so
all stages agree on the plan without communicating.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

from megatron_ponder.model.ponder import pass_schedule


def num_chunks(num_latent_thoughts: int, jacobi_per_microbatch: Sequence[int]) -> int:
    """Virtual chunks one step needs: the passes of its longest micro-batch."""
    if not jacobi_per_microbatch:
        raise ValueError("a step needs at least one micro-batch")
    return max(len(pass_schedule(num_latent_thoughts, j)) for j in jacobi_per_microbatch)


@dataclass(frozen=True)
class PassPlan:
    """The chunks of one micro-batch: ``slots[c]`` is the number of slots per token of the pass
    run in chunk ``c``, or None for a pass-through chunk."""

    slots: tuple

    @classmethod
    def build(cls, num_latent_thoughts: int, jacobi_iterations: int,
              chunks: int) -> "PassPlan":
        passes = pass_schedule(num_latent_thoughts, jacobi_iterations)
        padding = chunks - len(passes)
        if padding < 0:
            raise ValueError(f"{len(passes)} passes (K={num_latent_thoughts}, "
                             f"J={jacobi_iterations}) do not fit in {chunks} chunks")
        growth = passes[:num_latent_thoughts]
        return cls(tuple(growth) + (None,) * padding + tuple(passes[num_latent_thoughts:]))

    @property
    def final_chunk(self) -> int:
        return len(self.slots) - 1

    def previous_slots(self, chunk: int) -> Optional[int]:
        """Slots per token of the tensor chunk ``chunk`` receives (the output of the last
        real pass before it), None for chunk 0, which starts from the embeddings."""
        for earlier in range(chunk - 1, -1, -1):
            if self.slots[earlier] is not None:
                return self.slots[earlier]
        return None


def plan_step(num_latent_thoughts: int, jacobi_per_microbatch: Sequence[int]) -> List[PassPlan]:
    """The plan of every micro-batch of one step (all with the same number of chunks)."""
    chunks = num_chunks(num_latent_thoughts, jacobi_per_microbatch)
    return [PassPlan.build(num_latent_thoughts, j, chunks) for j in jacobi_per_microbatch]
