"""Hugging Face interop: import (``from_pretrained``) and the name/config mappings."""

from megatron_ponder.hf.causal_lm import CausalLMOutput, PonderForCausalLM
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.hf.loading import from_pretrained

__all__ = ["CausalLMOutput", "PonderForCausalLM", "from_pretrained", "save_pretrained"]
