"""``save_pretrained``: a full model (TP = PP = 1) -> a Hugging Face folder.

The folder holds ``config.json`` (the Llama / GPT-NeoX fields plus the PonderLM-2 fields of the
official releases, see ``config_mapping.hf_config_from``) and ``model.safetensors`` with HF
parameter names. ``from_pretrained`` of the folder rebuilds the same model; a vanilla model's
folder also loads in ``transformers`` (``AutoModelForCausalLM``) with the same logits.
Checkpoints saved with other parallel layouts are converted to a full model first (the
training-checkpoint converter's job).
"""

import json
import os
import shutil
from typing import Optional, Union

import torch
from megatron.core import parallel_state

from megatron_ponder.hf.adapters import megatron_to_hf
from megatron_ponder.hf.causal_lm import PonderForCausalLM
from megatron_ponder.hf.config_mapping import hf_config_from
from megatron_ponder.model.gpt_model import PonderGPTModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_pretrained(model: Union[PonderGPTModel, PonderForCausalLM], folder: str,
                    dtype: Optional[torch.dtype] = None,
                    tokenizer_file: Optional[str] = None) -> str:
    """Write ``model`` to ``folder`` (created if needed); returns the folder.

    ``dtype``: cast the weights (default: keep the model's dtype). ``tokenizer_file``: a
    ``tokenizer.json`` to copy next to the weights, so the folder is self-contained for
    ``tools/generate.py`` and ``tools/evaluate.py``.
    """
    if isinstance(model, PonderForCausalLM):
        model = model.model
    if not isinstance(model, PonderGPTModel):
        raise TypeError(f"save_pretrained takes a PonderGPTModel or PonderForCausalLM, got "
                        f"{type(model).__name__}")
    if (parallel_state.get_tensor_model_parallel_world_size() != 1
            or not (model.pre_process and model.post_process)):
        raise ValueError("save_pretrained needs the full model (tensor and pipeline parallel "
                         "size 1); convert a sharded checkpoint first")
    # TE linears add non-tensor "_extra_state" entries: not weights.
    state = {name: tensor for name, tensor in model.state_dict().items()
             if not name.endswith("_extra_state")}
    hf_state = megatron_to_hf(model.model_config, state)
    dtype = dtype or next(model.parameters()).dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"unsupported export dtype {dtype}; use one of {list(_DTYPE_NAMES)}")
    # safetensors refuses tensors that share storage (the q/k/v split returns views of one
    # fused weight), hence a contiguous copy of each.
    hf_state = {name: tensor.detach().to("cpu", dtype).contiguous().clone()
                for name, tensor in hf_state.items()}

    config = hf_config_from(model.model_config, model.ponder_config)
    config["torch_dtype"] = _DTYPE_NAMES[dtype]

    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(hf_state, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, os.path.join(folder, TOKENIZER_FILE))
    return folder
