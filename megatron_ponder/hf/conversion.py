"""Training checkpoints <-> Hugging Face folders.

A checkpoint of any tensor/pipeline layout loads into one full model in one process
(dist_checkpointing reshards); ``checkpoint_to_hf`` then writes a HF folder with the PonderLM-2
config fields. ``hf_to_checkpoint`` goes the other way, to continue pretraining from a Pythia,
Llama or official PonderLM-2 release (``pretrain_ponder.py --load DIR --finetune``).
``official_to_hf`` rewrites an official release (or any folder ``from_pretrained`` reads) in
the native format.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch

from megatron_ponder.checkpoint.storage import save_model_only_checkpoint
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.hf.loading import checkpoint_tokenizer, load_hf_config, \
    load_training_model, resolve_dtype
from megatron_ponder.tokenizer import HuggingFaceTokenizer, MegatronCoreTokenizer


@dataclass
class ConvertedModelConfig:
    """The config sections a converted checkpoint stores: the model alone (no run settings:
    it was not trained here; its tokenizer is the default one unless the run says otherwise)."""

    model: ModelConfig
    ponder: PonderConfig


def checkpoint_to_hf(root: str, folder: str, iteration: Optional[int] = None,
                     dtype: Optional[torch.dtype] = None,
                     tokenizer_file: Optional[str] = None, format: str = "transformers") -> str:
    """Write the checkpoint as a HF folder (``format``: see ``hf.export.save_pretrained``); the
    run's tokenizer goes along when it is a Hugging Face tokenizer (unless ``tokenizer_file``
    names another): its tokenizer.json, and for megatron-core's HuggingFaceTokenizer
    transformers' own tokenizer files too."""
    model = load_training_model(root, iteration)
    with tempfile.TemporaryDirectory() as scratch:
        transformers_files = os.path.join(scratch, "transformers")
        from_transformers = False
        if tokenizer_file is None:
            tokenizer = checkpoint_tokenizer(root, iteration)
            if isinstance(tokenizer, HuggingFaceTokenizer):
                tokenizer_file = os.path.join(scratch, "tokenizer.json")
                tokenizer.save(tokenizer_file)
            elif isinstance(tokenizer, MegatronCoreTokenizer):
                from_transformers = tokenizer.save_hugging_face_files(transformers_files)
                saved = os.path.join(transformers_files, "tokenizer.json")
                tokenizer_file = saved if os.path.isfile(saved) else None
        save_pretrained(model, folder, dtype=dtype, tokenizer_file=tokenizer_file,
                        format=format)
        if from_transformers:  # its own configs (added tokens, templates) replace the generic
            shutil.copytree(transformers_files, folder, dirs_exist_ok=True)
    return folder


def hf_to_checkpoint(hf_folder: str, root: str, **overrides) -> str:
    """Write ``hf_folder``'s weights as a model-only training checkpoint (iteration 0)."""
    model = load_training_model(hf_folder, **overrides)
    os.makedirs(root, exist_ok=True)
    return save_model_only_checkpoint(
        root, model, ConvertedModelConfig(model.model_config, model.ponder_config))


def official_to_hf(source: str, output: str, dtype_name: Optional[str] = None) -> str:
    """``source`` in the native format, with its tokenizer.json; the weights keep the folder's
    dtype unless ``dtype_name`` (a ``DTYPES`` name) says otherwise."""
    dtype = resolve_dtype(dtype_name or "auto", load_hf_config(source))
    tokenizer = os.path.join(source, "tokenizer.json")
    model = load_training_model(source)
    return save_pretrained(model, output, dtype=dtype,
                           tokenizer_file=tokenizer if os.path.isfile(tokenizer) else None)
