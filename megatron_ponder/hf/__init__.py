"""Hugging Face interop: ``from_pretrained`` (a folder -> the transformers-native
``PonderLM2ForCausalLM``), ``load_megatron`` (a folder -> our megatron-core model),
``save_pretrained`` (our model -> a folder) and the name/config mappings."""

from megatron_ponder.hf.causal_lm import CausalLMOutput, PonderForCausalLM
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.hf.loading import from_pretrained, load_megatron

__all__ = ["CausalLMOutput", "PonderForCausalLM", "from_pretrained", "load_megatron",
           "save_pretrained"]
