"""The vanilla causal LM (``--vanilla``): one pass over the unscaled embeddings, whatever K."""

from megatron_ponder.methods.base import ONE_PASS, Method


class Vanilla(Method):
    name = "vanilla"
    summary = "a plain causal LM: one pass, no thoughts, no embedding scaling (as --vanilla)"
    embedding_scale = 0.0
    thoughtless = True

    def passes(self, num_latent_thoughts, jacobi_iterations):
        return ONE_PASS

    def scale_factor(self, num_latent_thoughts):
        return 0.0

    def official_config_fields(self):
        return {}


VANILLA = Vanilla()
