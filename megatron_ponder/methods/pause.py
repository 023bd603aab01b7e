"""The Pause baseline of the paper: the same inference cost as K latent thoughts, but the K
extra slots of every token hold one learned pause embedding p instead of the model's own
outputs, so one pass suffices:

    e = sqrt(H) * E[x]
    h = stack(splice(e, [p, ..., p]))            # K pause slots after every token
    logits = output_layer(h at slot K)           # the last pause slot predicts x_{t+1}

Every slot of token t sits at position t, as in PonderLM-2.
"""

from megatron_ponder.methods.base import Method
from megatron_ponder.methods.plan import Pass, PassInput


class Pause(Method):
    name = "pause"
    summary = "K learned pause slots after every token, one pass (embeddings scaled by sqrt(H))"
    embedding_scale = 1.0

    def extra_passes(self, num_latent_thoughts, jacobi_iterations):
        return (Pass(num_latent_thoughts + 1, PassInput.PAUSE),)


PAUSE = Pause()
