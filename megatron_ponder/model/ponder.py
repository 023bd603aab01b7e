"""The PonderLM-2 forward (arXiv 2509.23184), written like the paper's pseudocode.

Each token t owns K+1 consecutive slots [e_t, z_t^1, ..., z_t^K]; every slot of token t sits at
position t; attention is causal over the flat (K+1)L sequence. ``stack`` is all decoder layers
plus the final norm, and its output at slot s of token t becomes the thought z_t^{s+1} of the
next pass. The sequential dependency between thoughts is solved by Jacobi iteration:

    e = sqrt(2.5 H) * E[x]                          # once per micro-batch
    h = stack(e)                                    # growth pass 0: tokens only
    for slots in 2..K:    h = stack(splice(e, h, slots))      # growth: one more thought
    for _ in range(J+1):  h = stack(splice(e, h, K+1))        # J Jacobi passes + final pass
    logits = output_layer(h at slot K)              # only slot K is ever scored

Gradients flow through every pass (nothing is detached). With K = 0 there is nothing to iterate
and the forward is one ordinary pass. ``grad_passes=N`` (``--ponder-grad-passes``, not in the
paper) runs all but the last N passes without building a graph: the same forward values, a
truncated gradient, and no backward (nor saved activations) for the early passes.

The schedule is a ``PassPlan``, the one description of the passes that every driver follows:
``ponder_forward`` here (training and scoring), inference (``megatron_ponder.inference.passes``
hangs adaptive Jacobi stopping and the KV cache on its hooks) and the pipeline
(``megatron_ponder.parallel.pipeline`` runs each pass as one round through the stages).
"""

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Sequence, Tuple

import numpy as np
import torch

from megatron_ponder.ops import splice


@dataclass(frozen=True)
class PassPlan:
    """The passes of one forward and the hooks its callers hang on them."""

    num_latent_thoughts: int
    jacobi_iterations: int
    grad_passes: Optional[int] = None
    """Build a graph for the last N passes only (None: all)."""
    stop_jacobi: Optional[Callable[[torch.Tensor, torch.Tensor], bool]] = None
    """Called after each Jacobi pass with the previous pass's output and its own; True skips
    the remaining Jacobi passes (adaptive Jacobi). None: run all J."""
    around_final_pass: Callable[[], ContextManager] = contextlib.nullcontext
    """Entered around the final pass only (inference attaches the KV cache there)."""

    def __post_init__(self):
        if self.grad_passes is not None and self.stop_jacobi is not None:
            # grad_passes counts back from the planned final pass; an early stop would move it.
            raise ValueError("a PassPlan takes grad_passes or stop_jacobi, not both")

    @property
    def slots(self) -> Tuple[int, ...]:
        """Slots per token of each pass: K growth passes, then J Jacobi passes and the final
        pass. K=1, J=3 -> (1, 2, 2, 2, 2) (lengths L, 2L, 2L, 2L, 2L); K=0 -> (1,)."""
        k = self.num_latent_thoughts
        if k == 0:
            return (1,)
        return tuple(range(1, k + 1)) + (k + 1,) * (self.jacobi_iterations + 1)

    @property
    def final(self) -> int:
        """Index of the final pass, the one whose slot K is scored."""
        return len(self.slots) - 1

    def ends_jacobi(self, index: int, previous, output) -> bool:
        """Whether the stopping rule ends the Jacobi passes after pass ``index``."""
        is_jacobi = self.num_latent_thoughts <= index < self.final
        return is_jacobi and self.stop_jacobi is not None and self.stop_jacobi(previous, output)

    def builds_graph(self, index: int) -> bool:
        """Whether pass ``index`` is among the last ``grad_passes`` (every pass without it)."""
        return index >= len(self.slots) - (self.grad_passes or len(self.slots))

    def graph(self, index: int) -> ContextManager:
        """``torch.no_grad()`` around a pass that builds no graph, else nothing."""
        return contextlib.nullcontext() if self.builds_graph(index) else torch.no_grad()


def ponder_forward(model, input_ids, plan: PassPlan, **stack_kwargs):
    """Run the passes of ``plan`` and return the final pass's stack output at slot K, [L, B, H].

    ``model`` provides ``embed(input_ids)`` (scaled word embeddings, [L, B, H]) and
    ``stack(hidden, num_slots, **stack_kwargs)``; sequence-parallel shards work unchanged
    because the splice only moves rows within a token's own slots.
    """
    embeddings = model.embed(input_ids)
    hidden = None
    for index, num_slots in enumerate(plan.slots[:plan.final]):  # growth and Jacobi passes
        with plan.graph(index):
            new = ponder_pass(model, embeddings, hidden, num_slots, **stack_kwargs)
        stop, hidden = plan.ends_jacobi(index, hidden, new), new
        if stop:
            break
    num_slots = plan.slots[plan.final]
    with plan.graph(plan.final), plan.around_final_pass():
        hidden = ponder_pass(model, embeddings, hidden, num_slots, **stack_kwargs)
    return select_slot(hidden, num_slots, num_slots - 1)


def ponder_pass(model, embeddings, previous, num_slots: int, **stack_kwargs):
    """One pass: ``stack(splice(e, previous))``, or ``stack(e)`` for the first pass. The
    pipeline runs its passes one at a time through this."""
    inputs = embeddings if previous is None else splice(embeddings, previous, num_slots)
    return model.stack(inputs, num_slots, **stack_kwargs)


def select_slot(hidden, num_slots: int, slot: int):
    """Rows of one slot of every token: [L * num_slots, B, H] -> [L, B, H]."""
    rows, batch, width = hidden.shape
    return hidden.view(rows // num_slots, num_slots, batch, width)[:, slot]


def draw_jacobi_iterations(choices: Sequence[int], seed: int, iteration: int,
                           micro_batch: int) -> int:
    """J for one micro-batch, drawn uniformly from ``choices``.

    Derived only from (seed, iteration, micro-batch index), so every rank that shares the
    micro-batch (tensor, pipeline, context parallel) draws the same J without communicating,
    and a resumed run draws the same sequence.
    """
    if not choices:
        raise ValueError("draw_jacobi_iterations needs a non-empty set of choices")
    rng = np.random.default_rng([seed, iteration, micro_batch])
    return int(choices[rng.integers(len(choices))])
