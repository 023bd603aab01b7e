"""megatron_ponder: pretraining PonderLM-2 language models on megatron-core."""

__version__ = "0.1.0"
