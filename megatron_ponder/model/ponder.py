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

The passes are a ``PassPlan`` built by the method registry (``megatron_ponder.methods``; the
Pause and Loop baselines are other plans over the same model), and ``ponder_forward`` is the
one driver that runs any plan: training and validation here and, pass by pass, the pipeline
(``megatron_ponder.parallel.pipeline`` runs each pass as one round through the stages with
``pass_inputs`` on the first stage). Inference (KV cache, adaptive Jacobi, padded batches) is
the transformers-native model's (``megatron_ponder/hf/remote/modeling_ponderlm2.py``), tested
against this forward.
"""

from typing import Sequence

import numpy as np

from megatron_ponder.methods import Pass, PassInput, PassPlan
from megatron_ponder.ops import splice


def ponder_forward(model, input_ids, plan: PassPlan, **stack_kwargs):
    """Run the passes of ``plan`` and return the final pass's stack output at its last slot,
    [L, B, H].

    ``model`` provides ``embed(input_ids)`` (scaled word embeddings, [L, B, H]),
    ``pause_slots(embeddings, n)`` (for plans with pause slots) and
    ``stack(hidden, num_slots, final_norm=..., **stack_kwargs)``; sequence-parallel shards work
    unchanged because the splice only moves rows within a token's own slots.
    """
    embeddings = model.embed(input_ids)
    hidden = None
    for index, step in enumerate(plan.passes[:plan.final]):  # every pass before the final one
        with plan.graph(index):
            hidden = run_pass(model, step, embeddings, hidden, **stack_kwargs)
    final = plan.passes[plan.final]
    with plan.graph(plan.final):
        hidden = run_pass(model, final, embeddings, hidden, **stack_kwargs)
    return select_slot(hidden, final.slots, final.slots - 1)


def run_pass(model, step: Pass, embeddings, previous, **stack_kwargs):
    """One pass: the layer stack over what ``step`` feeds it (``pass_inputs``)."""
    return model.stack(pass_inputs(model, step, embeddings, previous), step.slots,
                       final_norm=step.final_norm, **stack_kwargs)


def pass_inputs(model, step: Pass, embeddings, previous):
    """What pass ``step`` feeds the stack, [L * slots, B, H]: the embeddings, the splice of
    the embeddings with the previous pass's outputs or with pause slots, or the previous
    output itself."""
    if step.input is PassInput.EMBEDDINGS:
        return embeddings
    if step.input is PassInput.SPLICE:
        return splice(embeddings, previous, step.slots)
    if step.input is PassInput.PAUSE:
        return splice(embeddings, model.pause_slots(embeddings, step.slots - 1), step.slots)
    return previous


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
