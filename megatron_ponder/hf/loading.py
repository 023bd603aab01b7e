"""Loading a Hugging Face folder: ours (the transformers-native format), an official PonderLM-2
release, or a stock ``LlamaForCausalLM`` / ``GPTNeoXForCausalLM`` folder.

* ``from_pretrained`` returns the transformers-native ``PonderLM2ForCausalLM`` (a
  ``transformers.PreTrainedModel``, the class ``AutoModelForCausalLM`` builds with
  ``trust_remote_code=True``): the model to use from Python.
* ``load_megatron`` returns the folder as our megatron-core model (``PonderForCausalLM``), the
  engine of ``tools/generate.py`` / ``tools/evaluate.py`` and the start of ``from-hf``
  conversion to a training checkpoint.

Both read the same config and weights with the same checks and give the same logits.
"""

import json
import os
from typing import Any, Dict, Tuple, Union

import torch

from megatron_ponder import mcore
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf.adapters import ConversionError, hf_to_megatron, megatron_to_hf
from megatron_ponder.hf.causal_lm import PonderForCausalLM
from megatron_ponder.hf.config_mapping import (
    PONDER_OVERRIDES,
    model_config_from_hf,
    native_config_from,
    ponder_config_from_hf,
)
from megatron_ponder.model.build import build_model

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


def load_megatron(path: str, **overrides) -> PonderForCausalLM:
    """``path`` as our megatron-core model (``PonderForCausalLM``: forward, generate with our
    KV-cache engine, pass reports). Overrides: ``num_latent_thoughts``, ``jacobi_iterations``,
    ``vanilla``, ``scale_embeds``. Returns a float32 model in eval mode on CPU (move it with
    ``.to()``); sets up megatron-core in this process (``mcore.init``) when not done yet."""
    hf_config = load_hf_config(path)
    model_config = model_config_from_hf(hf_config)
    ponder_config = ponder_config_from_hf(hf_config, model_config.arch, overrides)
    hf_state = load_hf_state_dict(path)
    state = hf_to_megatron(model_config, hf_state)

    mcore.init(single_process=True)
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


# ------------------------------------------------------------------ the transformers-native model
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_OVERRIDES = PONDER_OVERRIDES + ("jacobi_tolerance", "max_jacobi_iterations")
ADAPTIVE = "adaptive"
# Fields of a folder's config.json that the native config keeps as they are.
_CARRIED_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings",
                   "jacobi_tolerance", "max_jacobi_iterations", "use_cache")


def _native_classes():
    """(PonderLM2Config, PonderLM2ForCausalLM), registered for the Auto classes so that
    ``save_pretrained`` writes ``auto_map`` and copies the modeling files (a folder that
    ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`` loads)."""
    try:
        from megatron_ponder.hf.remote.configuration_ponderlm2 import PonderLM2Config
        from megatron_ponder.hf.remote.modeling_ponderlm2 import PonderLM2ForCausalLM
    except ImportError as error:
        raise ImportError(f"from_pretrained needs transformers (pip install transformers): "
                          f"{error}") from error

    if PonderLM2ForCausalLM._auto_class is None:
        PonderLM2Config.register_for_auto_class()
        PonderLM2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    return PonderLM2Config, PonderLM2ForCausalLM


def _resolve_dtype(torch_dtype, hf_config: dict) -> torch.dtype:
    if torch_dtype is None:
        return torch.float32
    if torch_dtype == "auto":
        torch_dtype = hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32"
    if isinstance(torch_dtype, str):
        if torch_dtype not in DTYPES:
            raise ValueError(f"unsupported torch_dtype {torch_dtype!r}; use one of "
                             f"{list(DTYPES)} or 'auto'")
        return DTYPES[torch_dtype]
    if torch_dtype not in DTYPES.values():
        raise ValueError(f"unsupported torch_dtype {torch_dtype}; use one of {list(DTYPES)} "
                         f"or 'auto'")
    return torch_dtype


def _resolve_device_map(device_map) -> Union[torch.device, Dict[str, Any]]:
    """One device, or a {module name: device} dict for accelerate to dispatch."""
    if isinstance(device_map, (int, torch.device)):
        return torch.device(device_map)
    if isinstance(device_map, str):
        if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
            if torch.cuda.is_available() and torch.cuda.device_count() > 1:
                return {"": device_map}  # accelerate splits the layers
            return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return torch.device(device_map)
    if isinstance(device_map, dict):
        if not device_map:
            raise ValueError("device_map is an empty dict")
        devices = {str(torch.device(d) if isinstance(d, int) else d)
                   for d in device_map.values()}
        if len(devices) == 1:
            only = next(iter(device_map.values()))
            return torch.device(only)
        return dict(device_map)
    raise TypeError(f"device_map must be a device, 'auto' or a dict, got "
                    f"{type(device_map).__name__}")


def _dispatch(model, device_map: Dict[str, Any]):
    try:
        import accelerate
    except ImportError:
        raise ImportError("a device_map over several devices needs accelerate "
                          "(pip install accelerate)") from None
    if set(device_map) == {""}:  # "auto" and friends on several GPUs
        device_map = accelerate.infer_auto_device_map(
            model, no_split_module_classes=model._no_split_modules)
    return accelerate.dispatch_model(model, device_map=device_map)


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, copied when it is a view into a larger tensor (our q/k/v and gate/up splits
    are): parameters sharing storage would look tied to ``save_pretrained``."""
    if tensor.is_contiguous() and \
            tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def native_config(hf_config: dict, overrides: Dict[str, Any], dtype: torch.dtype
                  ) -> Tuple[Any, ModelConfig, PonderConfig]:
    """(PonderLM2Config, ModelConfig, PonderConfig) of a folder's config.json with
    ``overrides`` applied."""
    overrides = dict(overrides)
    unknown = sorted(set(overrides) - set(NATIVE_OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown}; allowed: {list(NATIVE_OVERRIDES)}")
    tolerance = overrides.pop("jacobi_tolerance", None)
    cap = overrides.pop("max_jacobi_iterations", None)
    adaptive = overrides.get("jacobi_iterations") == ADAPTIVE
    if adaptive:
        overrides.pop("jacobi_iterations")
    elif tolerance is not None or cap is not None:
        raise ValueError("jacobi_tolerance / max_jacobi_iterations need "
                         "jacobi_iterations='adaptive'")
    elif isinstance(overrides.get("jacobi_iterations"), str):
        raise ValueError(f"jacobi_iterations must be an int or 'adaptive', got "
                         f"{overrides['jacobi_iterations']!r}")
    model_config = model_config_from_hf(hf_config)
    ponder_config = ponder_config_from_hf(hf_config, model_config.arch, overrides)
    values = native_config_from(model_config, ponder_config)
    values.update({key: hf_config[key] for key in _CARRIED_FIELDS
                   if hf_config.get(key) is not None})
    if "jacobi_iterations" in overrides:
        values["jacobi_tolerance"] = None  # a fixed J asked for
    if adaptive:
        values["jacobi_tolerance"] = float(tolerance) if tolerance is not None else (
            1e-4 if dtype == torch.float32 else 2e-2)
        if cap is not None:
            values["max_jacobi_iterations"] = int(cap)
    values["torch_dtype"] = {v: k for k, v in DTYPES.items()}[dtype]
    config_class, _ = _native_classes()
    values = {k: v for k, v in values.items() if k not in ("model_type", "auto_map")}
    return config_class(**values), model_config, ponder_config


def from_pretrained(path: str, *, torch_dtype=None, dtype=None,
                    device: Union[str, torch.device, None] = None, device_map=None,
                    **overrides):
    """A Hugging Face folder (ours, an official PonderLM-2 release, Pythia/GPT-NeoX or Llama,
    vanilla or PonderLM-2; safetensors or pytorch_model.bin, sharded or not) -> the
    transformers-native ``PonderLM2ForCausalLM`` in eval mode.

    ``torch_dtype`` (or ``dtype``): float32 (default), bfloat16, float16, a ``torch.dtype`` or
    ``"auto"`` (the folder's ``torch_dtype``). ``device`` or ``device_map`` (a device, ``"auto"``:
    the first GPU if any, else the CPU; a dict of module names to devices, several devices
    through accelerate). Overrides: ``num_latent_thoughts`` (K), ``jacobi_iterations`` (J, or
    ``"adaptive"`` with ``jacobi_tolerance`` / ``max_jacobi_iterations``), ``vanilla``,
    ``scale_embeds``.
    """
    if torch_dtype is not None and dtype is not None:
        raise ValueError("give torch_dtype or dtype, not both")
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    hf_config = load_hf_config(path)
    target_dtype = _resolve_dtype(dtype if dtype is not None else torch_dtype, hf_config)
    config, model_config, _ = native_config(hf_config, overrides, target_dtype)
    # Our adapters validate the checkpoint and normalise its names (tied output layers, old
    # GPT-NeoX buffers, transformers 5 spellings) to the native parameter names.
    state = megatron_to_hf(model_config, hf_to_megatron(model_config, load_hf_state_dict(path)))

    _, model_class = _native_classes()
    with torch.device("meta"):
        model = model_class(config)
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ConversionError(f"unexpected weight(s) {unexpected[:8]}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} weight(s): {missing[:8]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConversionError(
                f"shape mismatch for {name!r}: checkpoint {tuple(tensor.shape)} vs model "
                f"{tuple(expected[name].shape)} from config.json")
    target = None if device_map is None else _resolve_device_map(device_map)
    place = target if isinstance(target, torch.device) else torch.device(device or "cpu")
    model.load_state_dict({name: _own_storage(tensor.to(place, target_dtype))
                           for name, tensor in state.items()}, strict=True, assign=True)
    if isinstance(target, dict):
        model = _dispatch(model, target)
    generation_file = os.path.join(path, "generation_config.json")
    if os.path.isfile(generation_file):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()
