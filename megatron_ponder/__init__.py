"""megatron_ponder: pretraining PonderLM-2 language models on megatron-core."""

from megatron_ponder.log import quiet_third_party_warnings
from megatron_ponder.process_lifetime import tie_children_to_their_parents

__version__ = "0.1.0"

quiet_third_party_warnings()
tie_children_to_their_parents()
