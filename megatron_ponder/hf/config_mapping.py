"""Hugging Face config.json <-> (ModelConfig, PonderConfig).

Accepts the spellings different transformers versions write (``rotary_pct`` vs
``partial_rotary_factor``, ``rope_theta`` / ``rotary_emb_base`` at the top level or inside
``rope_parameters``) and the PonderLM-2 fields of the official checkpoints.
"""

from typing import Any, Dict, Optional, Tuple

import torch

from megatron_ponder.config import RANDOM_JACOBI_RECIPES, ModelConfig, PonderConfig

HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "GPTNeoXForCausalLM": "gpt_neox"}
NATIVE_MODEL_TYPE = "ponderlm2"
"""model_type of the transformers-native format (hf/remote/*_ponderlm2.py)."""
NATIVE_ARCHITECTURE = "PonderLM2ForCausalLM"
NATIVE_CONFIG_CLASS = "configuration_ponderlm2.PonderLM2Config"
PONDER_OVERRIDES = ("num_latent_thoughts", "jacobi_iterations", "vanilla", "scale_embeds")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The weight dtypes a folder may hold, by their ``torch_dtype`` names (the tools' --dtype)."""


class UnsupportedConfigError(ValueError):
    """The config asks for something this project does not implement."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (a config's ``torch_dtype``)."""
    return {value: name for name, value in DTYPES.items()}[dtype]


def is_native(hf: Dict[str, Any]) -> bool:
    return hf.get("model_type") == NATIVE_MODEL_TYPE


def official_fields(hf: Dict[str, Any]) -> Dict[str, Any]:
    """A native (model_type ponderlm2) config in the official layout's spellings; other
    configs unchanged."""
    if not is_native(hf):
        return hf
    # transformers' save_pretrained leaves out fields equal to the defaults: fill them in.
    from megatron_ponder.hf.remote.configuration_ponderlm2 import PonderLM2Config

    try:
        hf = dict(PonderLM2Config(**{k: v for k, v in hf.items()
                                     if k not in ("model_type", "transformers_version")}
                                  ).to_dict(), **hf)
    except ValueError as error:
        raise UnsupportedConfigError(str(error)) from None
    arch = hf["arch"]
    out = dict(hf, model_type=arch)
    if arch == "llama":
        out.update(architectures=["LlamaForCausalLM"], rms_norm_eps=hf.get("norm_eps", 1e-5))
        if hf.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedConfigError("llama with partial rotary is not supported")
    else:
        out.update(architectures=["GPTNeoXForCausalLM"],
                   layer_norm_eps=hf.get("norm_eps", 1e-5),
                   partial_rotary_factor=hf.get("partial_rotary_factor", 0.25))
    return out


def detect_architecture(hf: Dict[str, Any]) -> str:
    hf = official_fields(hf)
    names = list(hf.get("architectures") or [])
    for name in names:
        if name in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[name]
    model_type = hf.get("model_type")
    if not names and model_type in HF_ARCHITECTURES.values():
        return model_type
    raise UnsupportedConfigError(
        f"unknown architecture {names or model_type!r}: supported are "
        f"{', '.join(HF_ARCHITECTURES)}")


def _rope_field(hf: Dict[str, Any], *names: str, default=None):
    """First of ``names`` found at the top level or inside rope_parameters / rope_scaling."""
    nested = hf.get("rope_parameters") or {}
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
        if isinstance(nested, dict) and nested.get(name) is not None:
            return nested[name]
    return default


def _check_rope_type(hf: Dict[str, Any]) -> None:
    for key in ("rope_parameters", "rope_scaling"):
        params = hf.get(key)
        if isinstance(params, dict):
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type not in (None, "default"):
                raise UnsupportedConfigError(f"RoPE scaling {rope_type!r} is not supported")


def model_config_from_hf(hf: Dict[str, Any]) -> ModelConfig:
    hf = official_fields(hf)
    arch = detect_architecture(hf)
    _check_rope_type(hf)
    common = dict(
        arch=arch,
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        num_attention_heads=hf["num_attention_heads"],
        ffn_hidden_size=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
    )
    if arch == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedConfigError(f"llama hidden_act {hf['hidden_act']!r}: only silu")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise UnsupportedConfigError("llama with attention_bias/mlp_bias is not supported")
        return ModelConfig(
            **common,
            num_query_groups=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            kv_channels=hf.get("head_dim"),
            rotary_percent=1.0,
            rotary_base=float(_rope_field(hf, "rope_theta", default=10000.0)),
            norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise UnsupportedConfigError(f"gpt_neox hidden_act {hf['hidden_act']!r}: only exact "
                                     f"'gelu' is supported")
    if hf.get("attention_bias", True) is False:
        raise UnsupportedConfigError("gpt_neox with attention_bias=false is not supported")
    return ModelConfig(
        **common,
        rotary_percent=float(_rope_field(hf, "partial_rotary_factor", "rotary_pct",
                                         default=0.25)),
        rotary_base=float(_rope_field(hf, "rope_theta", "rotary_emb_base", default=10000.0)),
        norm_epsilon=hf.get("layer_norm_eps", 1e-5),
        parallel_residual=hf.get("use_parallel_residual", True),
    )


def ponder_config_from_hf(hf: Dict[str, Any], arch: str,
                          overrides: Optional[Dict[str, Any]] = None) -> PonderConfig:
    """PonderLM-2 fields: ``recurrent_model`` false/absent means a vanilla checkpoint."""
    hf = official_fields(hf)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PONDER_OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown}; allowed: {list(PONDER_OVERRIDES)}")
    if hf.get("interpolation"):
        raise UnsupportedConfigError(
            "interpolation=true is the earlier PonderLM variant (probability-weighted "
            "embeddings); megatron_ponder implements PonderLM-2 only")
    vanilla = not hf.get("recurrent_model", False)
    vanilla = overrides.pop("vanilla", vanilla)
    if vanilla and overrides.get("num_latent_thoughts"):
        raise UnsupportedConfigError(
            "this checkpoint is vanilla (recurrent_model is false or absent); pass "
            "vanilla=False as well to run it with latent thoughts")
    random_j = hf.get("random_jacobi_iterations", False)
    if random_j is True:
        random_j = RANDOM_JACOBI_RECIPES[arch]
    return PonderConfig(
        num_latent_thoughts=overrides.get("num_latent_thoughts",
                                          hf.get("num_latent_thoughts", 1)),
        jacobi_iterations=overrides.get("jacobi_iterations",
                                        hf.get("num_jacobi_iterations", 3)),
        random_jacobi_iterations=tuple(random_j or ()),
        scale_embeds=overrides.get("scale_embeds", hf.get("scale_embeds", not vanilla)),
        vanilla=vanilla,
        ponder_method=hf.get("ponder_method", "ponderlm2"),
    )


def hf_config_from(model: ModelConfig, ponder: PonderConfig) -> Dict[str, Any]:
    """A config.json for export, with the PonderLM-2 fields of the official releases."""
    common = dict(
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        intermediate_size=model.ffn_hidden_size,
        vocab_size=model.vocab_size,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    if model.arch == "llama":
        hf = dict(common, architectures=["LlamaForCausalLM"], model_type="llama",
                  num_key_value_heads=model.num_query_groups, head_dim=model.kv_channels,
                  hidden_act="silu", rms_norm_eps=model.norm_epsilon,
                  rope_theta=model.rotary_base, attention_bias=False, mlp_bias=False)
    else:
        hf = dict(common, architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox",
                  hidden_act="gelu", layer_norm_eps=model.norm_epsilon,
                  rotary_pct=model.rotary_percent, partial_rotary_factor=model.rotary_percent,
                  rotary_emb_base=model.rotary_base, rope_theta=model.rotary_base,
                  use_parallel_residual=model.parallel_residual, attention_bias=True)
    hf.update(
        recurrent_model=not ponder.vanilla,
        num_latent_thoughts=ponder.num_latent_thoughts,
        num_jacobi_iterations=ponder.jacobi_iterations,
        random_jacobi_iterations=bool(ponder.random_jacobi_iterations),
        scale_embeds=ponder.scale_embeds,
        interpolation=False,
    )
    if not ponder.vanilla:  # a baseline records its method; absent = PonderLM-2
        hf.update(ponder.method.official_config_fields())
    return hf


def native_config_from(model: ModelConfig, ponder: PonderConfig) -> Dict[str, Any]:
    """config.json of the transformers-native format (``PonderLM2Config``): its own model_type
    and architecture names, and ``auto_map`` to the modeling files next to the weights."""
    official = hf_config_from(model, ponder)
    architecture = NATIVE_ARCHITECTURE
    config = dict(
        model_type=NATIVE_MODEL_TYPE, arch=model.arch, architectures=[architecture],
        auto_map={"AutoConfig": NATIVE_CONFIG_CLASS,
                  "AutoModelForCausalLM": f"modeling_ponderlm2.{architecture}"},
        vocab_size=model.vocab_size, hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size, num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_query_groups, head_dim=model.kv_channels,
        hidden_act="silu" if model.arch == "llama" else "gelu", norm_eps=model.norm_epsilon,
        rope_theta=model.rotary_base, partial_rotary_factor=model.rotary_percent,
        use_parallel_residual=model.parallel_residual,
        attention_bias=model.arch == "gpt_neox", tie_word_embeddings=False,
        torch_dtype="float32", use_cache=True,
        jacobi_tolerance=None, max_jacobi_iterations=32,
        ponder_method=ponder.ponder_method)
    for key in ("recurrent_model", "num_latent_thoughts", "num_jacobi_iterations",
                "random_jacobi_iterations", "scale_embeds"):
        config[key] = official[key]
    # The vanilla class's spelling of the norm epsilon too: a vanilla model's folder then loads
    # in LlamaForCausalLM / GPTNeoXForCausalLM with its own epsilon, not the class default.
    eps_name = "rms_norm_eps" if model.arch == "llama" else "layer_norm_eps"
    config[eps_name] = official[eps_name]
    return config
