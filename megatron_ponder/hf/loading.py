"""``from_pretrained``: a Hugging Face folder -> PonderForCausalLM on megatron-core."""

import json
import os
from typing import Dict

import torch

from megatron_ponder.hf.adapters import ConversionError, hf_to_megatron
from megatron_ponder.hf.causal_lm import PonderForCausalLM
from megatron_ponder.hf.config_mapping import model_config_from_hf, ponder_config_from_hf
from megatron_ponder.model.build import build_model
from megatron_ponder.parallel.state import ensure_single_process_parallel_state

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _load_file(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    # weights_only: a checkpoint is data, never code to execute.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_hf_state_dict(folder: str) -> Dict[str, torch.Tensor]:
    """All tensors of a HF folder (single file or sharded with an index)."""
    for name in _WEIGHT_FILES:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        if not name.endswith(".index.json"):
            return _load_file(path)
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load_file(os.path.join(folder, shard)))
        return state
    raise FileNotFoundError(f"no weights in {folder!r}: expected one of {', '.join(_WEIGHT_FILES)}")


def load_hf_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {folder!r} a Hugging Face model folder?")
    with open(path) as f:
        return json.load(f)


def from_pretrained(path: str, **overrides) -> PonderForCausalLM:
    """Load a ``LlamaForCausalLM`` / ``GPTNeoXForCausalLM`` folder (vanilla or PonderLM-2).

    Overrides: ``num_latent_thoughts``, ``jacobi_iterations``, ``vanilla``, ``scale_embeds``.
    Returns a float32 model in eval mode on CPU (move it with ``.to()``).
    """
    hf_config = load_hf_config(path)
    model_config = model_config_from_hf(hf_config)
    ponder_config = ponder_config_from_hf(hf_config, model_config.arch, overrides)
    hf_state = load_hf_state_dict(path)
    state = hf_to_megatron(model_config, hf_state)

    ensure_single_process_parallel_state()
    # Weights are overwritten right away: skip the random initialisation.
    model = build_model(model_config, ponder_config, perform_initialization=False)
    expected = model.state_dict()
    for name, tensor in state.items():
        if name not in expected:
            raise ConversionError(f"unexpected weight {name!r}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConversionError(
                f"shape mismatch for {name!r}: checkpoint {tuple(tensor.shape)} vs model "
                f"{tuple(expected[name].shape)} from config.json")
    missing = [n for n in expected if n not in state and not n.endswith("_extra_state")]
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} weight(s): {missing[:8]}")
    model.load_state_dict({n: t.float() for n, t in state.items()}, strict=False)
    return PonderForCausalLM(model, hf_config).eval()
