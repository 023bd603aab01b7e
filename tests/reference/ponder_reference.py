"""Independent plain-PyTorch reference of the PonderLM-2 computation (docs/method.md).

This module is the spec in executable form, used only by tests. It was written from the
specification in ``docs/method.md`` without looking at ``megatron_ponder``; it imports nothing
but ``torch`` and the Python standard library, and it shares no code with the real model.

Weights come as a Hugging Face ``state_dict`` (``LlamaForCausalLM`` or ``GPTNeoXForCausalLM`` key
names) plus the ``config.json`` dict. Everything (attention, rotary, norms, activations) is written
out by hand with explicit matmuls; clarity wins over speed.

Public functions
----------------
- ``reference_forward``    the training/scoring forward: growth passes, J Jacobi passes, final pass.
- ``reference_sequential`` the exact sequential computation (the Jacobi fixed point).
- ``reference_loss``       mean next-token cross-entropy on the slot-K logits.
- ``reference_token_losses`` the same cross-entropy per position, before the mean.
- ``reference_pause_forward`` / ``reference_loop_forward`` the paper's Pause and Loop baselines.
- ``parse_hf_config``      the config spellings this reference understands (returns ``RefConfig``).

The two baselines follow the definitions of the PonderLM-2 authors' own code (their repository's
``modeling_llama_pause.py`` / ``modeling_gpt_neox_addpausetoken.py`` for Pause,
``modeling_llama_loop.py`` / ``modeling_gpt_neox_addhidden_weightshare.py`` for Loop), restated
here with the building blocks below; nothing of that code is reused.

Numerics: computation runs in ``promote_types(weight dtype, float32)``: float32 weights give
float32, float64 weights give float64, bf16/fp16 weights are upcast to float32. Nothing is
detached, so gradients with respect to the ``state_dict`` tensors (if they require grad) flow
through every pass (docs/method.md, "Training and scoring forward" step 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "RefConfig",
    "parse_hf_config",
    "reference_forward",
    "reference_sequential",
    "reference_loss",
    "reference_token_losses",
    "reference_pause_forward",
    "reference_loop_forward",
    "insert_pause_tokens",
    "embedding_scale",
    "pause_embedding_scale",
    "slot_position_ids",
    "pass_slot_counts",
]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

_LLAMA_ARCHS = {"LlamaForCausalLM", "LlamaModel"}
_NEOX_ARCHS = {"GPTNeoXForCausalLM", "GPTNeoXModel"}


@dataclass(frozen=True)
class RefConfig:
    """The architecture facts the reference needs, normalised from a HF config dict."""

    arch: str  # "llama" or "gpt_neox"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    rotary_dim: int  # number of leading dims of each head that are rotated
    hidden_act: str
    attention_bias: bool
    mlp_bias: bool  # Llama only; GPT-NeoX MLP linears always have biases
    parallel_residual: bool  # GPT-NeoX only
    tie_word_embeddings: bool


def _first_present(*candidates):
    """First candidate that is not None (config values may legitimately be 0 / False)."""
    for value in candidates:
        if value is not None:
            return value
    return None


def _detect_arch(hf_config: dict, state_dict: dict | None) -> str:
    for name in hf_config.get("architectures") or []:
        if name in _LLAMA_ARCHS:
            return "llama"
        if name in _NEOX_ARCHS:
            return "gpt_neox"
    model_type = hf_config.get("model_type")
    if model_type == "llama":
        return "llama"
    if model_type == "gpt_neox":
        return "gpt_neox"
    if state_dict is not None:
        if "gpt_neox.embed_in.weight" in state_dict:
            return "gpt_neox"
        if "model.embed_tokens.weight" in state_dict:
            return "llama"
    raise ValueError(
        "cannot tell the architecture: expected architectures=[LlamaForCausalLM|GPTNeoXForCausalLM], "
        f"model_type llama|gpt_neox, or recognisable state_dict keys; got {hf_config.get('architectures')!r}, "
        f"{hf_config.get('model_type')!r}"
    )


def parse_hf_config(hf_config: dict, state_dict: dict | None = None) -> RefConfig:
    """Normalise a HF ``config.json`` dict (transformers 5.x and older spellings).

    Spellings handled:
    - architecture: ``architectures`` (LlamaForCausalLM / GPTNeoXForCausalLM), else ``model_type``
      (llama / gpt_neox), else the state_dict keys.
    - rotary base: ``rope_parameters.rope_theta`` (transformers 5), ``rope_theta`` (older Llama),
      ``rotary_emb_base`` (older GPT-NeoX); default 10000.
    - rotary fraction: ``rope_parameters.partial_rotary_factor`` (transformers 5),
      ``partial_rotary_factor``, ``rotary_pct`` (older GPT-NeoX); default 0.25 for GPT-NeoX (the HF
      default), 1.0 for Llama.
    - rope type: ``rope_parameters.rope_type`` / ``rope_scaling.{rope_type,type}``; only "default"
      (plain RoPE) is supported, anything else raises NotImplementedError.
    - norms: ``rms_norm_eps`` (Llama, default 1e-6 as HF) / ``layer_norm_eps`` (GPT-NeoX, default 1e-5).
    - ``num_key_value_heads`` (default num_attention_heads), ``head_dim`` (Llama; default
      hidden_size // num_attention_heads; GPT-NeoX always uses hidden_size // num_attention_heads as
      HF does), ``hidden_act`` (default silu / gelu), ``attention_bias`` (default False for Llama,
      True for GPT-NeoX, whose older configs always had biases), ``mlp_bias`` (Llama, default False),
      ``use_parallel_residual`` (GPT-NeoX, default True), ``tie_word_embeddings`` (default False).
    """
    arch = _detect_arch(hf_config, state_dict)
    hidden = int(hf_config["hidden_size"])
    num_heads = int(hf_config["num_attention_heads"])
    num_kv = int(_first_present(hf_config.get("num_key_value_heads"), num_heads))
    if arch == "llama":
        head_dim = int(_first_present(hf_config.get("head_dim"), hidden // num_heads))
    else:
        head_dim = hidden // num_heads
        num_kv = num_heads  # GPT-NeoX has no GQA

    rope_params = hf_config.get("rope_parameters") or {}
    rope_scaling = hf_config.get("rope_scaling") or {}
    if not isinstance(rope_params, dict):
        rope_params = {}
    if not isinstance(rope_scaling, dict):
        rope_scaling = {}
    rope_type = _first_present(
        rope_params.get("rope_type"),
        rope_params.get("type"),
        rope_scaling.get("rope_type"),
        rope_scaling.get("type"),
        "default",
    )
    if rope_type != "default":
        raise NotImplementedError(f"reference supports only plain RoPE, got rope_type={rope_type!r}")
    rope_theta = float(
        _first_present(
            rope_params.get("rope_theta"),
            hf_config.get("rope_theta"),
            hf_config.get("rotary_emb_base"),
            10000.0,
        )
    )
    rotary_fraction = float(
        _first_present(
            rope_params.get("partial_rotary_factor"),
            hf_config.get("partial_rotary_factor"),
            hf_config.get("rotary_pct"),
            0.25 if arch == "gpt_neox" else 1.0,
        )
    )
    if arch == "llama" and rotary_fraction != 1.0:
        raise NotImplementedError("Llama with partial rotary is not a HF Llama; not supported")
    rotary_dim = int(head_dim * rotary_fraction)  # int() truncation exactly as HF
    if rotary_dim % 2:
        raise ValueError(f"rotary dim {rotary_dim} must be even")

    if arch == "llama":
        norm_eps = float(_first_present(hf_config.get("rms_norm_eps"), 1e-6))
        hidden_act = _first_present(hf_config.get("hidden_act"), "silu")
        attention_bias = bool(_first_present(hf_config.get("attention_bias"), False))
        mlp_bias = bool(_first_present(hf_config.get("mlp_bias"), False))
        parallel_residual = False
    else:
        norm_eps = float(_first_present(hf_config.get("layer_norm_eps"), 1e-5))
        hidden_act = _first_present(hf_config.get("hidden_act"), "gelu")
        attention_bias = bool(_first_present(hf_config.get("attention_bias"), True))
        mlp_bias = True
        parallel_residual = bool(_first_present(hf_config.get("use_parallel_residual"), True))

    return RefConfig(
        arch=arch,
        hidden_size=hidden,
        num_layers=int(hf_config["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        intermediate_size=int(hf_config["intermediate_size"]),
        norm_eps=norm_eps,
        rope_theta=rope_theta,
        rotary_dim=rotary_dim,
        hidden_act=hidden_act,
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        parallel_residual=parallel_residual,
        tie_word_embeddings=bool(_first_present(hf_config.get("tie_word_embeddings"), False)),
    )


# --------------------------------------------------------------------------------------------
# Weights (HF key names)
# --------------------------------------------------------------------------------------------


class _Weights:
    """Reads HF-named tensors from a state_dict, cast to the compute dtype (autograd preserved)."""

    def __init__(self, cfg: RefConfig, state_dict: dict):
        self.cfg = cfg
        self.sd = state_dict
        embed_key = "model.embed_tokens.weight" if cfg.arch == "llama" else "gpt_neox.embed_in.weight"
        self.dtype = torch.promote_types(self._raw(embed_key).dtype, torch.float32)
        self.embed = self.get(embed_key)

        # Output layer. Llama: lm_head.weight. GPT-NeoX: the hub / save_pretrained files call it
        # embed_out.weight, while transformers 5.x in-memory models (model.state_dict()) rename it
        # to lm_head.weight; accept either. Tied embeddings may omit it entirely.
        head_keys = ["lm_head.weight"] if cfg.arch == "llama" else ["embed_out.weight", "lm_head.weight"]
        present = [key for key in head_keys if key in state_dict]
        if present:
            self.lm_head = self.get(present[0])
        elif cfg.tie_word_embeddings:
            self.lm_head = self.embed
        else:
            raise KeyError(f"state_dict has none of {head_keys} and tie_word_embeddings is False")

    def _raw(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise KeyError(f"state_dict is missing {key!r}")
        return self.sd[key]

    def get(self, key: str) -> torch.Tensor:
        return self._raw(key).to(self.dtype)

    def maybe(self, key: str, present: bool) -> torch.Tensor | None:
        """Bias that exists iff the config says so."""
        return self.get(key) if present else None


# --------------------------------------------------------------------------------------------
# Building blocks (written by hand)
# --------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x W^T + b, the nn.Linear convention of HF weights ([out, in])."""
    y = x @ weight.t()
    if bias is not None:
        y = y + bias
    return y


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm: x / sqrt(mean(x^2) + eps) * w (no bias, no mean subtraction)."""
    mean_square = (x * x).mean(dim=-1, keepdim=True)
    return x / torch.sqrt(mean_square + eps) * weight


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm with bias: (x - mean) / sqrt(biased var + eps) * w + b."""
    mean = x.mean(dim=-1, keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(dim=-1, keepdim=True)
    return centered / torch.sqrt(var + eps) * weight + bias


def _activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "silu" or name == "swish":
        return x * torch.sigmoid(x)
    if name == "gelu":  # exact (erf) GeLU
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):  # tanh approximation
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))
    if name == "relu":
        return torch.clamp(x, min=0)
    raise NotImplementedError(f"hidden_act {name!r}")


def _rotary_cos_sin(cfg: RefConfig, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos/sin tables [S, rotary_dim] for the given (possibly repeated) position ids.

    HF convention: inv_freq_i = theta^(-2i/rotary_dim), i = 0..rotary_dim/2-1; the angle table is
    duplicated ([freqs, freqs]) to pair dim j with dim j + rotary_dim/2 ("rotate half").
    Angles are computed in float64 and then cast.
    """
    rd = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    angles = position_ids.to(torch.float64)[:, None] * inv_freq[None, :]  # [S, rd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [S, rd]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first rotary_dim dims of every head; x is [B, heads, S, head_dim]."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x_rot = x_rot * cos + _rotate_half(x_rot) * sin
    return torch.cat([x_rot, x_pass], dim=-1)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v with explicit matmuls.

    q: [B, nh, S, d]; k, v: [B, nkv, S, d]. GQA: query head h reads kv head h // (nh / nkv)
    (HF repeat_kv ordering). The mask is the plain causal mask over the flat sequence: position i
    attends to j <= i (docs/method.md: the ordinary causal mask over all (K+1)L slots).
    """
    num_heads, seq_len, head_dim = q.shape[1], q.shape[2], q.shape[3]
    group = num_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)  # [B, nh, S, S]
    allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v  # [B, nh, S, d]


def _split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[B, S, heads*head_dim] -> [B, heads, S, head_dim]."""
    b, s, _ = x.shape
    return x.view(b, s, heads, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, S, head_dim] -> [B, S, heads*head_dim]."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def _llama_layer(cfg: RefConfig, w: _Weights, i: int, x: torch.Tensor, cos, sin) -> torch.Tensor:
    """Pre-norm Llama block: x + attn(rms(x)), then + swiglu_mlp(rms(.))."""
    p = f"model.layers.{i}."
    ab, mb = cfg.attention_bias, cfg.mlp_bias

    h = _rms_norm(x, w.get(p + "input_layernorm.weight"), cfg.norm_eps)
    q = _linear(h, w.get(p + "self_attn.q_proj.weight"), w.maybe(p + "self_attn.q_proj.bias", ab))
    k = _linear(h, w.get(p + "self_attn.k_proj.weight"), w.maybe(p + "self_attn.k_proj.bias", ab))
    v = _linear(h, w.get(p + "self_attn.v_proj.weight"), w.maybe(p + "self_attn.v_proj.bias", ab))
    q = _apply_rotary(_split_heads(q, cfg.num_heads, cfg.head_dim), cos, sin)
    k = _apply_rotary(_split_heads(k, cfg.num_kv_heads, cfg.head_dim), cos, sin)
    v = _split_heads(v, cfg.num_kv_heads, cfg.head_dim)
    attn = _merge_heads(_causal_attention(q, k, v))
    attn = _linear(attn, w.get(p + "self_attn.o_proj.weight"), w.maybe(p + "self_attn.o_proj.bias", ab))
    x = x + attn

    h = _rms_norm(x, w.get(p + "post_attention_layernorm.weight"), cfg.norm_eps)
    gate = _linear(h, w.get(p + "mlp.gate_proj.weight"), w.maybe(p + "mlp.gate_proj.bias", mb))
    up = _linear(h, w.get(p + "mlp.up_proj.weight"), w.maybe(p + "mlp.up_proj.bias", mb))
    mlp = _linear(
        _activation(gate, cfg.hidden_act) * up,
        w.get(p + "mlp.down_proj.weight"),
        w.maybe(p + "mlp.down_proj.bias", mb),
    )
    return x + mlp


def _neox_layer(cfg: RefConfig, w: _Weights, i: int, x: torch.Tensor, cos, sin) -> torch.Tensor:
    """GPT-NeoX block.

    Fused QKV: the output of query_key_value ([3H]) is laid out per head as [heads, 3, head_dim]
    (q, k, v of head 0, then of head 1, ...), as HF GPT-NeoX views it.
    Parallel residual: x + attn(ln1(x)) + mlp(ln2(x)); sequential: y = x + attn(ln1(x)),
    y + mlp(ln2(y)).
    """
    p = f"gpt_neox.layers.{i}."
    ab = cfg.attention_bias
    b, s, _ = x.shape
    nh, hd = cfg.num_heads, cfg.head_dim

    h = _layer_norm(x, w.get(p + "input_layernorm.weight"), w.get(p + "input_layernorm.bias"), cfg.norm_eps)
    qkv = _linear(
        h, w.get(p + "attention.query_key_value.weight"), w.maybe(p + "attention.query_key_value.bias", ab)
    )
    qkv = qkv.view(b, s, nh, 3, hd)
    q = qkv[:, :, :, 0, :].transpose(1, 2)  # [B, nh, S, hd]
    k = qkv[:, :, :, 1, :].transpose(1, 2)
    v = qkv[:, :, :, 2, :].transpose(1, 2)
    q = _apply_rotary(q, cos, sin)
    k = _apply_rotary(k, cos, sin)
    attn = _merge_heads(_causal_attention(q, k, v))
    attn = _linear(attn, w.get(p + "attention.dense.weight"), w.maybe(p + "attention.dense.bias", ab))

    def mlp(inp: torch.Tensor) -> torch.Tensor:
        hidden = _linear(inp, w.get(p + "mlp.dense_h_to_4h.weight"), w.get(p + "mlp.dense_h_to_4h.bias"))
        hidden = _activation(hidden, cfg.hidden_act)
        return _linear(hidden, w.get(p + "mlp.dense_4h_to_h.weight"), w.get(p + "mlp.dense_4h_to_h.bias"))

    ln2_w, ln2_b = w.get(p + "post_attention_layernorm.weight"), w.get(p + "post_attention_layernorm.bias")
    if cfg.parallel_residual:
        return x + attn + mlp(_layer_norm(x, ln2_w, ln2_b, cfg.norm_eps))
    y = x + attn
    return y + mlp(_layer_norm(y, ln2_w, ln2_b, cfg.norm_eps))


def _layers(cfg: RefConfig, w: _Weights, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """All decoder layers, no final norm: [B, S, H] -> the raw residual stream [B, S, H]."""
    cos, sin = _rotary_cos_sin(cfg, position_ids, x.dtype)
    layer = _llama_layer if cfg.arch == "llama" else _neox_layer
    for i in range(cfg.num_layers):
        x = layer(cfg, w, i, x, cos, sin)
    return x


def _final_norm(cfg: RefConfig, w: _Weights, x: torch.Tensor) -> torch.Tensor:
    """The final norm: RMSNorm (Llama) or LayerNorm with bias (GPT-NeoX)."""
    if cfg.arch == "llama":
        return _rms_norm(x, w.get("model.norm.weight"), cfg.norm_eps)
    return _layer_norm(
        x, w.get("gpt_neox.final_layer_norm.weight"), w.get("gpt_neox.final_layer_norm.bias"), cfg.norm_eps
    )


def _stack(cfg: RefConfig, w: _Weights, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """docs/method.md `stack(.)`: all decoder layers followed by the final norm.

    x: [B, S, H] input slots (already embedded / thoughts); position_ids: LongTensor [S].
    Returns the final-normed hidden states [B, S, H] (before the output layer).
    """
    return _final_norm(cfg, w, _layers(cfg, w, x, position_ids))


def _output_layer(w: _Weights, hidden: torch.Tensor) -> torch.Tensor:
    """The lm head (no bias): logits = hidden W_out^T."""
    return hidden @ w.lm_head.t()


# --------------------------------------------------------------------------------------------
# The ponder method (docs/method.md)
# --------------------------------------------------------------------------------------------


def embedding_scale(hidden_size: int) -> float:
    """e_t = sqrt(2.5 * H) * E[x_t] (docs/method.md: only word embeddings are scaled)."""
    return math.sqrt(2.5 * hidden_size)


def slot_position_ids(num_tokens: int, slots_per_token: int) -> torch.Tensor:
    """Every slot of token t gets position id t: [0]*n + [1]*n + ... (token-major slots)."""
    return torch.tensor([t for t in range(num_tokens) for _ in range(slots_per_token)], dtype=torch.long)


def pass_slot_counts(num_latent_thoughts: int, jacobi_iterations: int) -> list[int]:
    """Slots per token in each pass: growth k=0..K-1 -> k+1; J Jacobi -> K+1; final -> K+1.

    K = 0 is a single plain pass (Jacobi passes cannot change anything without thoughts).
    """
    K, J = num_latent_thoughts, jacobi_iterations
    if K == 0:
        return [1]
    return [k + 1 for k in range(K)] + [K + 1] * J + [K + 1]


def _interleave(e: torch.Tensor, thoughts: list[torch.Tensor]) -> torch.Tensor:
    """Token-major slot layout [e_1, z_1^1..z_1^n, e_2, z_2^1..z_2^n, ...].

    e: [B, L, H]; thoughts[s-1]: z^s as [B, L, H]. Slot s of token t ends up at flat index
    t*(n+1)+s. Written as an explicit loop over tokens and slots.
    """
    slots = []
    for t in range(e.shape[1]):
        slots.append(e[:, t])
        for z in thoughts:
            slots.append(z[:, t])
    return torch.stack(slots, dim=1)


def _slot(out: torch.Tensor, slots_per_token: int, s: int) -> torch.Tensor:
    """Outputs at slot s of every token: flat indices t*slots_per_token + s -> [B, L, H]."""
    b, n, h = out.shape
    return out.view(b, n // slots_per_token, slots_per_token, h)[:, :, s, :]


def _check_inputs(input_ids: torch.Tensor, num_latent_thoughts: int, jacobi_iterations: int = 0) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if num_latent_thoughts < 0 or jacobi_iterations < 0:
        raise ValueError("num_latent_thoughts and jacobi_iterations must be >= 0")


def reference_forward(
    hf_config: dict,
    state_dict: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    num_latent_thoughts: int,
    jacobi_iterations: int,
    scale_embeds: bool = True,
    vanilla: bool = False,
) -> dict:
    """The PonderLM-2 training / scoring forward (docs/method.md, "Training and scoring forward").

    - e_t = sqrt(2.5*H) * E[x_t] if ``scale_embeds`` else E[x_t]; thoughts are never scaled.
    - K = ``num_latent_thoughts``; each token owns K+1 token-major slots
      [e_t, z_t^1..z_t^K]; every slot of token t has position id t; plain causal mask over the
      flat sequence.
    - Growth passes k = 0..K-1 over (k+1)L slots (the first is a plain L-token pass over e);
      after each, z^1..z^k are refreshed from slots 0..k-1 and z^{k+1} appended from slot k.
    - J = ``jacobi_iterations`` Jacobi passes over (K+1)L slots: every z^{s+1} <- output at slot s
      of the previous pass, all at once.
    - Final pass over (K+1)L slots; logits = output layer on slot K of every token only.
    - A thought is the ``stack`` output (after final norm, before the lm head), used as is.
    - K = 0: a single pass over L slots (pass_lengths == [L]) whatever J is.
    - ``vanilla=True``: a plain causal LM (no scaling, no thoughts, positions 0..L-1); K, J and
      ``scale_embeds`` are ignored. Equals transformers' own model.

    Returns a dict:
      "logits":        [B, L, V] from slot K of each token (slot 0 when K = 0 / vanilla).
      "pass_lengths":  list[int], the sequence length of every pass in order.
      "final_hidden":  [B, (K+1)L, H] final-normed output of the last pass.
      "thoughts":      [B, L, K, H]; thoughts[:, t, s-1] = z_t^s as fed INTO the final pass
                       (i.e. taken from the second-to-last pass's outputs).
      "pass_outputs":  list of every pass's final-normed output [B, len_p, H] (for debugging).
    """
    _check_inputs(input_ids, num_latent_thoughts, jacobi_iterations)
    cfg = parse_hf_config(hf_config, state_dict)
    w = _Weights(cfg, state_dict)
    batch, num_tokens = input_ids.shape
    H = cfg.hidden_size
    word = w.embed[input_ids]  # [B, L, H]

    if vanilla:
        out = _stack(cfg, w, word, torch.arange(num_tokens, device=input_ids.device))
        return {
            "logits": _output_layer(w, out),
            "pass_lengths": [num_tokens],
            "final_hidden": out,
            "thoughts": out.new_zeros(batch, num_tokens, 0, H),
            "pass_outputs": [out],
        }

    K = num_latent_thoughts
    e = word * embedding_scale(H) if scale_embeds else word
    thoughts: list[torch.Tensor] = []  # thoughts[s-1] = z^s, [B, L, H]
    thoughts_into_last_pass = thoughts
    pass_lengths: list[int] = []
    pass_outputs: list[torch.Tensor] = []
    out = None
    for n_slots in pass_slot_counts(K, jacobi_iterations):
        # The input of this pass has n_slots slots per token: e_t and z^1..z^{n_slots-1}.
        assert len(thoughts) == n_slots - 1
        thoughts_into_last_pass = thoughts
        x = _interleave(e, thoughts)
        positions = slot_position_ids(num_tokens, n_slots).to(input_ids.device)
        out = _stack(cfg, w, x, positions)
        pass_lengths.append(x.shape[1])
        pass_outputs.append(out)
        # Chain rule: z^{s+1}_t = output at slot s of token t, for the slots that feed a thought
        # (s = 0..min(n_slots, K)-1). In a growth pass this refreshes z^1..z^k and appends z^{k+1};
        # in a Jacobi pass it updates all of z^1..z^K (slot K's output is not a thought).
        thoughts = [_slot(out, n_slots, s) for s in range(min(n_slots, K))]

    logits = _output_layer(w, _slot(out, K + 1, K))
    if K > 0:
        thoughts_tensor = torch.stack(thoughts_into_last_pass, dim=2)
    else:
        thoughts_tensor = out.new_zeros(batch, num_tokens, 0, H)
    return {
        "logits": logits,
        "pass_lengths": pass_lengths,
        "final_hidden": out,
        "thoughts": thoughts_tensor,
        "pass_outputs": pass_outputs,
    }


def reference_sequential(
    hf_config: dict,
    state_dict: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    num_latent_thoughts: int,
    scale_embeds: bool = True,
) -> torch.Tensor:
    """The exact sequential computation = the Jacobi fixed point (docs/method.md, "The fixed point").

    Slots are filled in flat order. Thought z_t^{s+1} is the ``stack`` output at the LAST position
    of the prefix that ends at slot s of token t, where every earlier slot already holds its final
    value. The logits of token t are the output layer applied to the stack output at the last
    position of the prefix ending at slot K of token t. No Jacobi iteration and no reliance on
    causality between calls: each quantity is computed from its own prefix, so this is
    O(L*(K+1)) forward calls over growing prefixes.

    Returns logits [B, L, V].
    """
    _check_inputs(input_ids, num_latent_thoughts)
    cfg = parse_hf_config(hf_config, state_dict)
    w = _Weights(cfg, state_dict)
    K = num_latent_thoughts
    num_tokens = input_ids.shape[1]
    word = w.embed[input_ids]
    e = word * embedding_scale(cfg.hidden_size) if scale_embeds else word

    # slots[i] is the input at flat index i = t*(K+1)+s; positions[i] = t.
    slots: list[torch.Tensor] = []
    positions: list[int] = []
    logits = []
    for t in range(num_tokens):
        slots.append(e[:, t])
        positions.append(t)
        for s in range(K + 1):
            # Prefix ends at slot s of token t (all of its slots are final by now).
            prefix = torch.stack(slots, dim=1)
            out_last = _stack(cfg, w, prefix, torch.tensor(positions, device=input_ids.device))[:, -1]
            if s < K:
                slots.append(out_last)  # z_t^{s+1}
                positions.append(t)
            else:
                logits.append(_output_layer(w, out_last))  # slot K predicts x_{t+1}
    return torch.stack(logits, dim=1)


def reference_token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position, [B, L-1]: logits[:, t] (slot K of token t) predicts
    input_ids[:, t+1]. Written as -log_softmax gathered at the target, in at least float32."""
    pred = logits[:, :-1, :]
    dtype = torch.promote_types(pred.dtype, torch.float32)
    target = input_ids[:, 1:]
    log_probs = torch.log_softmax(pred.to(dtype), dim=-1)
    return -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)


def reference_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the B*(L-1) positions of ``reference_token_losses``."""
    return reference_token_losses(logits, input_ids).mean()


# --------------------------------------------------------------------------------------------
# The paper's Pause and Loop baselines, as the authors' modeling files define them
# --------------------------------------------------------------------------------------------


def pause_embedding_scale(hidden_size: int) -> float:
    """The Pause baseline multiplies every input embedding, pause slots included, by sqrt(H)."""
    return math.sqrt(hidden_size)


def insert_pause_tokens(input_ids: torch.Tensor, num_pause_tokens: int, pause_token_id: int) -> torch.Tensor:
    """[B, L] -> [B, (K+1)L]: token t at flat index t*(K+1), then K copies of ``pause_token_id``."""
    batch, num_tokens = input_ids.shape
    columns = [input_ids[:, :, None]]
    columns += [torch.full_like(input_ids[:, :, None], pause_token_id)] * num_pause_tokens
    return torch.cat(columns, dim=2).reshape(batch, num_tokens * (num_pause_tokens + 1))


def reference_pause_forward(
    hf_config: dict,
    state_dict: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    num_pause_tokens: int,
    pause_token_id: int,
) -> dict:
    """The Pause baseline of the authors' ``modeling_llama_pause.py`` (Llama) and
    ``modeling_gpt_neox_addpausetoken.py`` (GPT-NeoX), one pass:

    - K = ``num_pause_tokens`` copies of one token id, ``pause_token_id``, follow every token:
      ids [x_1, P..P, x_2, P..P, ...], (K+1)L slots, token t at flat index t*(K+1).
    - The pause slot is an ordinary vocabulary id: its input is that id's row of the embedding
      table, E[P]. Every slot, pause slots included, is multiplied by sqrt(H) (not PonderLM-2's
      sqrt(2.5 H)). The Llama file always scales; the GPT-NeoX file scales when its config's
      ``scale_embeds`` is set, as the authors' training scripts set it.
      A model with a separate learned pause vector p (megatron_ponder's ``--ponder-method
      pause``: ``pause_embedding``, scaled by the same sqrt(H)) computes the same thing when
      p = E[P], so tests pass p in as that row; with P an id no input token uses (the authors'
      default is a padded-vocabulary id), E[P] is used by the pause slots alone.
    - Position ids: the token positions 0..L-1, each repeated K+1 times; plain causal mask.
    - One ``stack`` (all layers, then the final norm) over the (K+1)L slots; the logits of token
      t come from its last pause slot (flat index t*(K+1)+K), which predicts x_{t+1}.
    - K = 0: no pause slots, one plain pass, still scaled by sqrt(H).

    Returns {"logits": [B, L, V], "final_hidden": [B, (K+1)L, H], "slot_ids": [B, (K+1)L]}.
    """
    _check_inputs(input_ids, num_pause_tokens)
    cfg = parse_hf_config(hf_config, state_dict)
    w = _Weights(cfg, state_dict)
    slots = num_pause_tokens + 1
    slot_ids = insert_pause_tokens(input_ids, num_pause_tokens, pause_token_id)
    x = w.embed[slot_ids] * pause_embedding_scale(cfg.hidden_size)
    positions = slot_position_ids(input_ids.shape[1], slots).to(input_ids.device)
    out = _stack(cfg, w, x, positions)
    return {
        "logits": _output_layer(w, _slot(out, slots, slots - 1)),
        "final_hidden": out,
        "slot_ids": slot_ids,
    }


def reference_loop_forward(
    hf_config: dict,
    state_dict: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    num_extra_loops: int,
) -> dict:
    """The Loop baseline of the authors' ``modeling_llama_loop.py`` (Llama) and
    ``modeling_gpt_neox_addhidden_weightshare.py`` (GPT-NeoX), run as their training scripts
    configure it (the recurrent switch on, K = ``num_latent_thoughts``):

    - L slots only (no extra slots), positions 0..L-1, plain causal mask.
    - Input sqrt(2.5 H) * E[x_t] (both files scale unconditionally).
    - The whole decoder layer stack runs K+1 = ``num_extra_loops + 1`` times in a row, each loop
      reading the previous loop's raw residual stream: no norm between loops, the final norm
      once after the last loop; the rotary positions are the same in every loop.
    - Logits from every position; K = 0 is a plain scaled model.

    Returns {"logits": [B, L, V], "final_hidden": [B, L, H]}.
    """
    _check_inputs(input_ids, num_extra_loops)
    cfg = parse_hf_config(hf_config, state_dict)
    w = _Weights(cfg, state_dict)
    x = w.embed[input_ids] * embedding_scale(cfg.hidden_size)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    for _ in range(num_extra_loops + 1):
        x = _layers(cfg, w, x, positions)
    out = _final_norm(cfg, w, x)
    return {"logits": _output_layer(w, out), "final_hidden": out}
