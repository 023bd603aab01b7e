"""Hugging Face <-> megatron parameter mapping, one adapter per architecture.

Used by ``from_pretrained`` and ``load_training_model`` (import) and by export and
conversion. Names on the megatron side are those of ``PonderGPTModel`` with TP=PP=1 (full, unsharded tensors);
dist_checkpointing handles any other layout.
"""

from typing import Dict, Iterable, Tuple

import torch

from megatron_ponder.config import ModelConfig, PonderConfig

StateDict = Dict[str, torch.Tensor]


class ConversionError(ValueError):
    """A checkpoint does not match the architecture/config it claims."""


def check_weights(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> None:
    """``state`` must fill ``expected`` (a model's state dict) exactly, shape for shape
    (``_extra_state`` entries, which are not weights, aside)."""
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ConversionError(f"unexpected weight(s) {unexpected[:8]}")
    missing = sorted(n for n in expected if n not in state and not n.endswith("_extra_state"))
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} weight(s): {missing[:8]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConversionError(
                f"shape mismatch for {name!r}: checkpoint {tuple(tensor.shape)} vs model "
                f"{tuple(expected[name].shape)} from config.json")


def _interleave_qkv(q, k, v, num_heads: int, num_groups: int) -> torch.Tensor:
    """Separate q/k/v projections -> megatron's fused layout [groups, (heads/groups)+2, d, ...].

    megatron splits its fused QKV per query group: the group's query heads, then its key head,
    then its value head. Works for weights ([out, in]) and biases ([out]).
    """
    per_group = num_heads // num_groups
    rest = q.shape[1:]
    q = q.reshape(num_groups, per_group, -1, *rest)
    k = k.reshape(num_groups, 1, -1, *rest)
    v = v.reshape(num_groups, 1, -1, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _split_qkv(qkv, num_heads: int, num_groups: int):
    """Inverse of ``_interleave_qkv``."""
    per_group = num_heads // num_groups
    rest = qkv.shape[1:]
    grouped = qkv.reshape(num_groups, per_group + 2, -1, *rest)
    q = grouped[:, :per_group].reshape(-1, *rest)
    k = grouped[:, per_group].reshape(-1, *rest)
    v = grouped[:, per_group + 1].reshape(-1, *rest)
    return q, k, v


class LlamaAdapter:
    """``LlamaForCausalLM`` names; fused QKV and [gate; up] fc1 on the megatron side."""

    hf_architecture = "LlamaForCausalLM"
    base_prefix = "model"

    def __init__(self, config: ModelConfig):
        self.config = config

    def renames(self, i: int) -> Iterable[Tuple[str, str]]:
        hf, mg = f"model.layers.{i}.", f"decoder.layers.{i}."
        yield hf + "input_layernorm.weight", mg + "input_layernorm.weight"
        yield hf + "post_attention_layernorm.weight", mg + "pre_mlp_layernorm.weight"
        yield hf + "self_attn.o_proj.weight", mg + "self_attention.linear_proj.weight"
        yield hf + "mlp.down_proj.weight", mg + "mlp.linear_fc2.weight"

    def to_megatron(self, hf: StateDict) -> StateDict:
        c = self.config
        out = {
            "embedding.word_embeddings.weight": hf.pop("model.embed_tokens.weight"),
            "decoder.final_layernorm.weight": hf.pop("model.norm.weight"),
        }
        # Tied checkpoints store no lm_head: the output layer starts as a copy (we train untied).
        lm_head = hf.pop("lm_head.weight", None)
        out["output_layer.weight"] = (lm_head if lm_head is not None
                                      else out["embedding.word_embeddings.weight"].clone())
        for i in range(c.num_layers):
            for hf_name, mg_name in self.renames(i):
                out[mg_name] = hf.pop(hf_name)
            attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            out[f"decoder.layers.{i}.self_attention.linear_qkv.weight"] = _interleave_qkv(
                hf.pop(attn + "q_proj.weight"), hf.pop(attn + "k_proj.weight"),
                hf.pop(attn + "v_proj.weight"), c.num_attention_heads, c.num_query_groups)
            out[f"decoder.layers.{i}.mlp.linear_fc1.weight"] = torch.cat(
                [hf.pop(mlp + "gate_proj.weight"), hf.pop(mlp + "up_proj.weight")], dim=0)
        return out

    def to_hf(self, mg: StateDict) -> StateDict:
        c = self.config
        mg = dict(mg)
        out = {
            "model.embed_tokens.weight": mg.pop("embedding.word_embeddings.weight"),
            "model.norm.weight": mg.pop("decoder.final_layernorm.weight"),
            "lm_head.weight": mg.pop("output_layer.weight"),
        }
        for i in range(c.num_layers):
            for hf_name, mg_name in self.renames(i):
                out[hf_name] = mg.pop(mg_name)
            attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            q, k, v = _split_qkv(mg.pop(f"decoder.layers.{i}.self_attention.linear_qkv.weight"),
                                 c.num_attention_heads, c.num_query_groups)
            out.update({attn + "q_proj.weight": q, attn + "k_proj.weight": k,
                        attn + "v_proj.weight": v})
            gate, up = mg.pop(f"decoder.layers.{i}.mlp.linear_fc1.weight").chunk(2, dim=0)
            out.update({mlp + "gate_proj.weight": gate, mlp + "up_proj.weight": up})
        _check_consumed(mg, "megatron")
        return out


class GPTNeoXAdapter:
    """``GPTNeoXForCausalLM`` names. HF's fused QKV is laid out per head as [q, k, v], which is
    exactly megatron's per-group layout with one head per group: a plain rename."""

    hf_architecture = "GPTNeoXForCausalLM"
    base_prefix = "gpt_neox"

    def __init__(self, config: ModelConfig):
        self.config = config

    def renames(self, i: int) -> Iterable[Tuple[str, str]]:
        hf, mg = f"gpt_neox.layers.{i}.", f"decoder.layers.{i}."
        pairs = [
            ("input_layernorm", "input_layernorm"),
            ("post_attention_layernorm", "pre_mlp_layernorm"),
            ("attention.query_key_value", "self_attention.linear_qkv"),
            ("attention.dense", "self_attention.linear_proj"),
            ("mlp.dense_h_to_4h", "mlp.linear_fc1"),
            ("mlp.dense_4h_to_h", "mlp.linear_fc2"),
        ]
        for hf_part, mg_part in pairs:
            for kind in ("weight", "bias"):
                yield f"{hf}{hf_part}.{kind}", f"{mg}{mg_part}.{kind}"

    def _global_renames(self):
        yield "gpt_neox.embed_in.weight", "embedding.word_embeddings.weight"
        yield "gpt_neox.final_layer_norm.weight", "decoder.final_layernorm.weight"
        yield "gpt_neox.final_layer_norm.bias", "decoder.final_layernorm.bias"
        yield "embed_out.weight", "output_layer.weight"

    def _all_renames(self):
        yield from self._global_renames()
        for i in range(self.config.num_layers):
            yield from self.renames(i)

    def to_megatron(self, hf: StateDict) -> StateDict:
        # transformers 5 names the output layer lm_head in memory (embed_out in files).
        if "embed_out.weight" not in hf and "lm_head.weight" in hf:
            hf["embed_out.weight"] = hf.pop("lm_head.weight")
        if "embed_out.weight" not in hf and "gpt_neox.embed_in.weight" in hf:
            hf["embed_out.weight"] = hf["gpt_neox.embed_in.weight"].clone()
        out = {}
        for hf_name, mg_name in self._all_renames():
            if hf_name not in hf:
                raise ConversionError(f"missing weight {hf_name!r} in the checkpoint")
            out[mg_name] = hf.pop(hf_name)
        # Old GPT-NeoX checkpoints also store derived buffers (causal mask, rotary inv_freq).
        for name in [n for n in hf if n.endswith((".attention.bias", ".attention.masked_bias",
                                                   ".rotary_emb.inv_freq"))]:
            hf.pop(name)
        return out

    def to_hf(self, mg: StateDict) -> StateDict:
        mg = dict(mg)
        out = {hf_name: mg.pop(mg_name) for hf_name, mg_name in self._all_renames()}
        _check_consumed(mg, "megatron")
        return out


ADAPTERS = {"llama": LlamaAdapter, "gpt_neox": GPTNeoXAdapter}


def _check_consumed(leftover: StateDict, side: str) -> None:
    if leftover:
        names = ", ".join(sorted(leftover)[:8])
        raise ConversionError(f"{len(leftover)} unexpected {side} weight(s): {names}")


# The Pause baseline's learned pause embedding (--ponder-method pause): same name both sides.
PAUSE_EMBEDDING = "pause_embedding"
PONDER_BASE_PREFIX = "ponderlm2"
"""The native format's base-model prefix for a model that is not vanilla, in place of
``model`` / ``gpt_neox`` (hf/remote/modeling_ponderlm2.py says why)."""


def _renamed_base(hf_state: StateDict, old: str, new: str) -> StateDict:
    renamed = {(new + name[len(old):] if name.startswith(old + ".") else name): tensor
               for name, tensor in hf_state.items()}
    if len(renamed) != len(hf_state):
        raise ConversionError(f"the checkpoint holds weights under both {old}.* and {new}.*")
    return renamed


def native_weight_names(model_config: ModelConfig, ponder_config: PonderConfig,
                        hf_state: StateDict) -> StateDict:
    """``megatron_to_hf``'s names as the native format stores them: the base model under
    ``PONDER_BASE_PREFIX`` unless the model computes what the vanilla class does."""
    if ponder_config.computes_vanilla:
        return hf_state
    return _renamed_base(hf_state, ADAPTERS[model_config.arch].base_prefix, PONDER_BASE_PREFIX)


def hf_to_megatron(model_config: ModelConfig, hf_state: StateDict) -> StateDict:
    """Map a full HF state dict (the vanilla classes' names, or the native format's) to
    PonderGPTModel names; every HF tensor must be used."""
    hf_state = _renamed_base(hf_state, PONDER_BASE_PREFIX,
                             ADAPTERS[model_config.arch].base_prefix)
    pause = hf_state.pop(PAUSE_EMBEDDING, None)
    try:
        out = ADAPTERS[model_config.arch](model_config).to_megatron(hf_state)
    except KeyError as exc:
        raise ConversionError(f"missing weight {exc.args[0]!r} in the checkpoint") from None
    _check_consumed(hf_state, "checkpoint")
    if pause is not None:
        out[PAUSE_EMBEDDING] = pause
    return out


def megatron_to_hf(model_config: ModelConfig, mg_state: StateDict) -> StateDict:
    """Map a full (TP=PP=1) PonderGPTModel state dict to HF names."""
    mg_state = dict(mg_state)
    pause = mg_state.pop(PAUSE_EMBEDDING, None)
    out = ADAPTERS[model_config.arch](model_config).to_hf(mg_state)
    if pause is not None:
        out[PAUSE_EMBEDDING] = pause
    return out
