"""Training checkpoints <-> Hugging Face folders, and loading a checkpoint for inference.

A checkpoint of any tensor/pipeline layout loads into one full model in one process
(dist_checkpointing reshards); ``checkpoint_to_hf`` then writes a HF folder with the PonderLM-2
config fields. ``hf_to_checkpoint`` goes the other way, to continue pretraining from a Pythia,
Llama or official PonderLM-2 release (``pretrain_ponder.py --load DIR --finetune``).
"""

import dataclasses
import json
import os
import tempfile
from typing import Optional, Tuple

import torch

from megatron_ponder import mcore
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf.causal_lm import PonderForCausalLM
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.hf.loading import load_megatron
from megatron_ponder.model.build import build_model
from megatron_ponder.tokenizer import HuggingFaceTokenizer, TokenizerSpec, build_tokenizer
from megatron_ponder.training.checkpointing import CheckpointError, checkpoint_dir, \
    find_checkpoint, load_checkpoint, save_model_only_checkpoint
from megatron_ponder.training.config import PretrainConfig, TokenizerConfig


def _config_section(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in values.items() if k in names})


def read_checkpoint_config(root: str, iteration: Optional[int] = None) -> dict:
    """The run config stored in a checkpoint (a plain dict of config sections)."""
    from megatron.core import dist_checkpointing

    iteration = find_checkpoint(root, iteration)  # verified; a damaged newest: the fallback
    if iteration is None:
        raise CheckpointError(f"no checkpoint in {root!r} (no latest_checkpointed_iteration.txt)")
    common = dist_checkpointing.load_common_state_dict(checkpoint_dir(root, iteration))
    return json.loads(common["config"])


def model_configs_from_checkpoint(config: dict) -> Tuple[ModelConfig, PonderConfig]:
    model_values = dict(config["model"])
    model_values["params_dtype"] = torch.float32  # full precision for conversion/inference
    model_values["bf16"] = model_values["fp16"] = False
    return _config_section(ModelConfig, model_values), _config_section(PonderConfig,
                                                                       config["ponder"])


def load_checkpoint_for_inference(root: str, iteration: Optional[int] = None
                                  ) -> PonderForCausalLM:
    """The checkpoint's weights in one float32 model (TP=PP=1) on CPU, in eval mode."""
    mcore.init(single_process=True)
    model_config, ponder_config = model_configs_from_checkpoint(
        read_checkpoint_config(root, iteration))
    model = build_model(model_config, ponder_config, perform_initialization=False)
    load_checkpoint(root, model, load_rng=False, iteration=iteration)
    return PonderForCausalLM(model).eval()


def checkpoint_tokenizer(root: str, iteration: Optional[int] = None):
    """The tokenizer the run trained with."""
    values = read_checkpoint_config(root, iteration).get("tokenizer", {})
    tokenizer = _config_section(TokenizerConfig, values)
    return build_tokenizer(TokenizerSpec(tokenizer_type=tokenizer.tokenizer_type,
                                         tokenizer_model=tokenizer.tokenizer_model,
                                         vocab_size=tokenizer.vocab_size))


def checkpoint_to_hf(root: str, folder: str, iteration: Optional[int] = None,
                     dtype: Optional[torch.dtype] = None,
                     tokenizer_file: Optional[str] = None, format: str = "transformers") -> str:
    """Write the checkpoint as a HF folder (``format``: see ``hf.export.save_pretrained``); the
    run's tokenizer goes along as tokenizer.json when it is a Hugging Face tokenizer (unless
    ``tokenizer_file`` names another)."""
    model = load_checkpoint_for_inference(root, iteration)
    with tempfile.TemporaryDirectory() as scratch:
        if tokenizer_file is None:
            tokenizer = checkpoint_tokenizer(root, iteration)
            if isinstance(tokenizer, HuggingFaceTokenizer):
                tokenizer_file = os.path.join(scratch, "tokenizer.json")
                tokenizer.save(tokenizer_file)
        save_pretrained(model, folder, dtype=dtype, tokenizer_file=tokenizer_file,
                        format=format)
    return folder


def hf_to_checkpoint(hf_folder: str, root: str, **overrides) -> str:
    """Write ``hf_folder``'s weights as a model-only training checkpoint (iteration 0)."""
    model = load_megatron(hf_folder, **overrides)
    config = PretrainConfig(model=model.model_config, ponder=model.ponder_config)
    os.makedirs(root, exist_ok=True)
    return save_model_only_checkpoint(root, model.model, config)
