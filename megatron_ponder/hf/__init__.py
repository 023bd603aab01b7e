"""Hugging Face interop and inference: ``from_pretrained`` (a folder or a training checkpoint ->
the transformers-native ``PonderLM2ForCausalLM``, the one inference engine),
``load_training_model`` (the same -> our megatron-core training model), ``save_pretrained``
(our model -> a folder), checkpoint conversion (``hf.conversion``) and the name/config
mappings."""

from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.hf.loading import from_pretrained, load_training_model

__all__ = ["from_pretrained", "load_training_model", "save_pretrained"]
