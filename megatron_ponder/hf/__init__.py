"""Hugging Face interop: ``from_pretrained`` (the one way to load a model: a folder -> the
transformers-native ``PonderLM2ForCausalLM``, or with ``engine="megatron"`` a folder or a
training checkpoint -> our megatron-core model), ``save_pretrained`` (our model -> a folder),
checkpoint conversion (``hf.conversion``) and the name/config mappings."""

from megatron_ponder.hf.causal_lm import CausalLMOutput, PonderForCausalLM
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.hf.loading import from_pretrained

__all__ = ["CausalLMOutput", "PonderForCausalLM", "from_pretrained", "save_pretrained"]
