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
"""

import contextlib
from typing import List, Optional, Sequence

import numpy as np
import torch

from megatron_ponder.ops import splice


def pass_schedule(num_latent_thoughts: int, jacobi_iterations: int) -> List[int]:
    """Slots per token of each pass: K growth passes, then J Jacobi passes and the final pass.

    K=1, J=3 -> [1, 2, 2, 2, 2] (lengths L, 2L, 2L, 2L, 2L); K=0 -> [1].
    """
    k = num_latent_thoughts
    if k == 0:
        return [1]
    return list(range(1, k + 1)) + [k + 1] * (jacobi_iterations + 1)


def ponder_forward(model, input_ids, num_latent_thoughts: int, jacobi_iterations: int,
                   grad_passes: Optional[int] = None, **stack_kwargs):
    """Run every pass and return the final pass's stack output at slot K, [L, B, H].

    ``model`` provides ``embed(input_ids)`` (scaled word embeddings, [L, B, H]) and
    ``stack(hidden, num_slots, **stack_kwargs)``; sequence-parallel shards work unchanged
    because the splice only moves rows within a token's own slots. ``grad_passes``: build a
    graph for the last N passes only (None: all).
    """
    embeddings = model.embed(input_ids)
    hidden = None
    schedule = pass_schedule(num_latent_thoughts, jacobi_iterations)
    for index, num_slots in enumerate(schedule):
        with graph_unless(index < len(schedule) - (grad_passes or len(schedule))):
            hidden = ponder_pass(model, embeddings, hidden, num_slots, **stack_kwargs)
    return select_slot(hidden, num_slots, num_slots - 1)


def graph_unless(no_graph: bool):
    """``torch.no_grad()`` for a pass outside the last ``grad_passes``, else nothing."""
    return torch.no_grad() if no_graph else contextlib.nullcontext()


def ponder_pass(model, embeddings, previous, num_slots: int, **stack_kwargs):
    """One pass: ``stack(splice(e, previous))``, or ``stack(e)`` for the first pass.

    Exposed so inference can drive the same passes with its own stopping rule (adaptive
    Jacobi) and attach a KV cache to the final pass only.
    """
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
