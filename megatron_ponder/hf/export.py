"""``save_pretrained``: a full model (TP = PP = 1) -> a Hugging Face folder.

Two layouts, both with ``model.safetensors`` under the parameter names of transformers'
``LlamaForCausalLM`` / ``GPTNeoXForCausalLM``:

* ``"transformers"`` (default): the transformers-native format. ``config.json`` has
  ``model_type: ponderlm2``, the architecture ``PonderLM2ForCausalLM`` (``arch``: llama or
  gpt_neox) and an ``auto_map`` to ``configuration_ponderlm2.py`` and
  ``modeling_ponderlm2.py``, copied next to the weights (``hf/remote/``), so that
  ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` runs the real
  PonderLM-2 forward and generation, and loading without trust_remote_code raises. The base
  model's weights are ``ponderlm2.*`` (not ``model.*`` / ``gpt_neox.*``) unless the model is
  vanilla, so that the vanilla class named explicitly reports them missing. Also
  ``generation_config.json`` and, with a tokenizer, ``tokenizer.json``,
  ``tokenizer_config.json`` and ``special_tokens_map.json``.
* ``"official"``: the layout of the official PonderLM-2 releases: ``LlamaForCausalLM`` /
  ``GPTNeoXForCausalLM`` plus the PonderLM-2 fields (``config_mapping.hf_config_from``).
  Stock transformers loads such a folder as a vanilla model (wrong logits unless vanilla).

``from_pretrained`` of either folder rebuilds the same model (the transformers-native model;
``load_training_model`` ours).
Checkpoints saved with other parallel layouts are converted to a full model first (the
training-checkpoint converter's job).
"""

import json
import os
import shutil
from typing import Optional

import torch
from megatron.core import parallel_state

from megatron_ponder.hf.adapters import megatron_to_hf, native_weight_names
from megatron_ponder.hf.config_mapping import DTYPES, dtype_name, hf_config_from, \
    native_config_from
from megatron_ponder.model.gpt_model import PonderGPTModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
GENERATION_CONFIG_FILE = "generation_config.json"
FORMATS = ("transformers", "official")
REMOTE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote")
REMOTE_FILES = ("configuration_ponderlm2.py", "modeling_ponderlm2.py")
# Tried in order (as megatron_ponder.tokenizer.huggingface does).
_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
_PAD_CANDIDATES = ("<|padding|>", "<pad>", "[PAD]")


def save_pretrained(model: PonderGPTModel, folder: str,
                    dtype: Optional[torch.dtype] = None,
                    tokenizer_file: Optional[str] = None,
                    format: str = "transformers") -> str:
    """Write ``model`` to ``folder`` (created if needed); returns the folder.

    ``dtype``: cast the weights (default: keep the model's dtype). ``tokenizer_file``: a
    ``tokenizer.json`` to copy next to the weights, so the folder is self-contained for
    ``tools/generate.py``, ``tools/evaluate.py`` and (with its tokenizer_config.json)
    ``AutoTokenizer``. ``format``: ``"transformers"`` or ``"official"`` (module docstring).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {FORMATS}")
    if type(model).__name__ == "PonderLM2ForCausalLM":
        raise TypeError("this is already a transformers model: use its own "
                        "model.save_pretrained(folder)")
    if not isinstance(model, PonderGPTModel):
        raise TypeError(f"save_pretrained takes a PonderGPTModel, got {type(model).__name__}")
    if (parallel_state.get_tensor_model_parallel_world_size() != 1
            or not (model.pre_process and model.post_process)):
        raise ValueError("save_pretrained needs the full model (tensor and pipeline parallel "
                         "size 1); convert a sharded checkpoint first")
    # TE linears add non-tensor "_extra_state" entries: not weights.
    state = {name: tensor for name, tensor in model.state_dict().items()
             if not name.endswith("_extra_state")}
    hf_state = megatron_to_hf(model.model_config, state)
    dtype = dtype or next(model.parameters()).dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"unsupported export dtype {dtype}; use one of {list(DTYPES.values())}")
    # safetensors refuses tensors that share storage (the q/k/v split returns views of one
    # fused weight), hence a contiguous copy of each.
    hf_state = {name: tensor.detach().to("cpu", dtype).contiguous().clone()
                for name, tensor in hf_state.items()}

    native = format == "transformers"
    if native:
        hf_state = native_weight_names(model.model_config, model.ponder_config, hf_state)
    config = (native_config_from if native else hf_config_from)(model.model_config,
                                                                 model.ponder_config)
    config["torch_dtype"] = dtype_name(dtype)
    special = _special_tokens(tokenizer_file) if native and tokenizer_file is not None else {}
    if native:
        config.update({f"{name}_token_id": token_id for name, (_, token_id) in special.items()
                       if name in ("bos", "eos", "pad")})

    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, WEIGHTS_FILE)
    save_file(hf_state, weights, metadata={"format": "pt"})
    _readable_like_the_others(weights)
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, os.path.join(folder, TOKENIZER_FILE))
    if native:
        for name in REMOTE_FILES:
            shutil.copyfile(os.path.join(REMOTE_DIR, name), os.path.join(folder, name))
        generation = {key: config[key] for key in ("bos_token_id", "eos_token_id",
                                                   "pad_token_id") if key in config}
        _write_json(os.path.join(folder, GENERATION_CONFIG_FILE), generation)
        if tokenizer_file is not None:
            _write_tokenizer_configs(folder, special)
    return folder


def _readable_like_the_others(path: str) -> None:
    """The mode a file created here gets (safetensors writes its file private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _special_tokens(tokenizer_file: str) -> dict:
    """{"bos"/"eos"/"unk"/"pad": (token, id)} found in a tokenizer.json (GPT-NeoX-20B style:
    one end-of-text token serves as bos, eos and unk)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(tokenizer_file)
    except Exception as error:  # tokenizers raises a bare Exception
        raise ValueError(f"cannot read tokenizer file {tokenizer_file!r}: {error}") from error
    found = {}
    for token in _EOS_CANDIDATES:
        if tokenizer.token_to_id(token) is not None:
            token_id = tokenizer.token_to_id(token)
            found = {"bos": (token, token_id), "eos": (token, token_id),
                     "unk": (token, token_id)}
            break
    for token in _PAD_CANDIDATES:
        if tokenizer.token_to_id(token) is not None:
            found["pad"] = (token, tokenizer.token_to_id(token))
            break
    return found


def _write_tokenizer_configs(folder: str, special: dict) -> None:
    """tokenizer_config.json + special_tokens_map.json for ``AutoTokenizer`` (a fast tokenizer
    on tokenizer.json; text is encoded as the tokenizer.json says)."""
    tokens = {f"{name}_token": token for name, (token, _) in special.items()}
    _write_json(os.path.join(folder, "tokenizer_config.json"),
                dict(tokens, tokenizer_class="PreTrainedTokenizerFast",
                     model_input_names=["input_ids", "attention_mask"],
                     clean_up_tokenization_spaces=False))
    _write_json(os.path.join(folder, "special_tokens_map.json"), tokens)
