"""megatron_ponder: pretraining PonderLM-2 language models on megatron-core."""

from megatron_ponder.log import quiet_third_party_warnings

__version__ = "0.1.0"

quiet_third_party_warnings()
