"""The paper's equal-inference-cost baselines, on the same model (``--ponder-method``).

Both spend K extra slots or passes per token like PonderLM-2 with K latent thoughts, but
without feeding the model's own hidden states back in as inputs:

    Pause (K pause slots after every token, one pass; e = sqrt(H) * E[x]):
        h = stack(splice(e, [p, ..., p]))            # p: one learned pause embedding
        logits = output_layer(h at slot K)           # the last pause slot predicts x_{t+1}

    Loop (the L tokens through the whole layer stack K+1 times; e = sqrt(2.5 H) * E[x]):
        h = e
        for _ in range(K):  h = layers(h)            # no norm between loops
        h = final_norm(layers(h))
        logits = output_layer(h)

Every slot of token t sits at position t, as in PonderLM-2 (``model.stack`` repeats positions).
"""

from megatron_ponder.model.ponder import select_slot
from megatron_ponder.ops import splice


def pause_forward(model, input_ids, num_pause_slots: int, **stack_kwargs):
    """Stack output at each token's last pause slot, [L, B, H]."""
    embeddings = model.embed(input_ids)
    num_slots = num_pause_slots + 1
    inputs = splice(embeddings, model.pause_slots(embeddings, num_pause_slots), num_slots)
    hidden = model.stack(inputs, num_slots, **stack_kwargs)
    return select_slot(hidden, num_slots, num_slots - 1)


def loop_forward(model, input_ids, num_extra_loops: int, **stack_kwargs):
    """Final-normed output of the last of ``num_extra_loops + 1`` loops, [L, B, H]."""
    hidden = model.embed(input_ids)
    for _ in range(num_extra_loops):
        hidden = model.stack(hidden, 1, final_norm=False, **stack_kwargs)
    return model.stack(hidden, 1, **stack_kwargs)
