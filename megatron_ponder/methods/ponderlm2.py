"""PonderLM-2 (arXiv 2509.23184): the model's own final hidden states fed back as K latent
thoughts per token, solved with Jacobi passes (the passes are described in
``megatron_ponder.model.ponder``)."""

from megatron_ponder.methods.base import Method
from megatron_ponder.methods.plan import Pass, PassInput


class PonderLM2(Method):
    name = "ponderlm2"
    summary = "latent thoughts: each token's K extra slots hold the model's own last outputs"
    embedding_scale = 2.5

    def extra_passes(self, num_latent_thoughts, jacobi_iterations):
        k = num_latent_thoughts
        growth = (Pass(1, PassInput.EMBEDDINGS),) + tuple(
            Pass(slots, PassInput.SPLICE) for slots in range(2, k + 1))
        jacobi = (Pass(k + 1, PassInput.SPLICE, jacobi=True),) * jacobi_iterations
        return growth + jacobi + (Pass(k + 1, PassInput.SPLICE),)

    def official_config_fields(self):
        return {}


PONDERLM2 = PonderLM2()
