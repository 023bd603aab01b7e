"""The Loop baseline of the paper: the same inference cost as K latent thoughts, spent by
running the L tokens through the whole layer stack K+1 times:

    h = sqrt(2.5 H) * E[x]
    for _ in range(K):  h = layers(h)            # no final norm between loops
    h = final_norm(layers(h))
    logits = output_layer(h)
"""

from megatron_ponder.methods.base import Method
from megatron_ponder.methods.plan import Pass, PassInput


class Loop(Method):
    name = "loop"
    summary = "the tokens through the whole layer stack K+1 times, final norm once"
    embedding_scale = 2.5

    def extra_passes(self, num_latent_thoughts, jacobi_iterations):
        first = Pass(1, PassInput.EMBEDDINGS, final_norm=False)
        middle = (Pass(1, PassInput.PREVIOUS, final_norm=False),) * (num_latent_thoughts - 1)
        return (first,) + middle + (Pass(1, PassInput.PREVIOUS),)


LOOP = Loop()
