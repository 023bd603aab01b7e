"""The transformers-native ``PonderLM2ForCausalLM`` (``megatron_ponder/hf/remote/``) built from a
folder's config and weights: the model ``from_pretrained`` returns."""

from typing import Any, Dict, Tuple

import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf.adapters import check_weights, hf_to_megatron, megatron_to_hf, \
    native_weight_names
from megatron_ponder.hf.config_mapping import (
    PONDER_OVERRIDES,
    dtype_name,
    model_config_from_hf,
    native_config_from,
    ponder_config_from_hf,
)

NATIVE_OVERRIDES = PONDER_OVERRIDES + ("jacobi_tolerance", "max_jacobi_iterations")
JACOBI_OVERRIDES = ("jacobi_iterations", "jacobi_tolerance", "max_jacobi_iterations")
"""The overrides that change how the model runs, not what it is (any source takes them)."""
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
    values["torch_dtype"] = dtype_name(dtype)
    config_class, _ = _native_classes()
    values = {k: v for k, v in values.items() if k not in ("model_type", "auto_map")}
    return config_class(**values), model_config, ponder_config


def native_model(hf_config: dict, hf_state: Dict[str, torch.Tensor], dtype: torch.dtype,
                 place: torch.device, overrides: Dict[str, Any]):
    """The native model of a folder's config and weights, in ``dtype`` on ``place``."""
    config, model_config, ponder_config = native_config(hf_config, overrides, dtype)
    # Our adapters validate the checkpoint and normalise its names (tied output layers, old
    # GPT-NeoX buffers, transformers 5 spellings, either base prefix) to the native ones.
    state = native_weight_names(model_config, ponder_config,
                                megatron_to_hf(model_config, hf_to_megatron(model_config,
                                                                            hf_state)))

    _, model_class = _native_classes()
    with torch.device("meta"):
        model = model_class(config)
    check_weights(state, model.state_dict())
    model.load_state_dict({name: _own_storage(tensor.to(place, dtype))
                           for name, tensor in state.items()}, strict=True, assign=True)
    return model


def dispatch(model, device_map: Dict[str, Any]):
    """Spread ``model`` over several devices with accelerate."""
    try:
        import accelerate
    except ImportError:
        raise ImportError("a device_map over several devices needs accelerate "
                          "(pip install accelerate)") from None
    if set(device_map) == {""}:  # "auto" and friends on several GPUs
        device_map = accelerate.infer_auto_device_map(
            model, no_split_module_classes=model._no_split_modules)
    return accelerate.dispatch_model(model, device_map=device_map)
