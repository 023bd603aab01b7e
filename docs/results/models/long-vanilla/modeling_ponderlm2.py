"""PonderLM-2 (arXiv 2509.23184) for Hugging Face transformers: pure PyTorch + transformers.

Every model folder exported by megatron_ponder carries this file; load it with

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

The method. Each token t owns K+1 slots [e_t, z_t^1, ..., z_t^K], all at position t, and
attention is causal over the flat (K+1)L sequence. ``stack`` is every decoder layer plus the
final norm; its output at slot s of token t is the latent thought z_t^{s+1} of the next pass,
fed back as is (unscaled):

    e = multiplier * E[x]                        # sqrt(2.5 H); 1 for a vanilla model
    h = stack(e)                                 # growth pass 1 (tokens only)
    for n in 2..K:     h = stack(splice(e, h, n))        # growth: one more thought per pass
    for _ in range(J): h = stack(splice(e, h, K+1))      # Jacobi passes
    h = stack(splice(e, h, K+1))                 # final pass (fills the KV cache)
    logits = lm_head(h at slot K)                # only slot K is scored

Adaptive Jacobi (``jacobi_iterations="adaptive"``) stops the Jacobi passes once the fed-back
thoughts of real tokens change by at most ``jacobi_tolerance``. Generation: the prefill writes
the final pass's (K+1)L slots to a cache; each new token then runs K+1 single-slot steps at its
position (step 0 takes e_t, step s the output of step s-1), each appending one slot. The Pause
baseline feeds a learned pause embedding in slots 1..K in one pass; the Loop baseline runs the
tokens through the layer stack K+1 times (one cache per loop).

Padding: ``attention_mask`` (1 = token, 0 = padding, left or right) gives each row positions
0.. from its first real token and hides padded keys, so a row's logits do not depend on the
batch it is in. The cache lives in ``PonderLM2Cache`` (own class, returned as ``ponder_cache``),
so generation does not depend on transformers' cache classes.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_ponderlm2 import PonderLM2Config

ADAPTIVE = "adaptive"
PONDER_BASE_NAME = "ponderlm2"
"""The base model's attribute (and weight-name prefix) of a model that is not vanilla."""
# scaled_dot_product_attention shares a key/value head among query heads itself from 2.5 on
# (no copy of the keys and values per query head).
_SDPA_SHARES_KV_HEADS = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)


# ------------------------------------------------------------------------------ building blocks
class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _activation(name: str):
    if name in ("silu", "swish"):
        return F.silu
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported hidden_act {name!r}")


def _inverse_frequencies(rotary_dim: int, theta: float, device) -> torch.Tensor:
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device)
    return 1.0 / (theta ** (exponent.float() / rotary_dim))


def _rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype):
    """positions [B, S] -> cos, signed sin [B, 1, S, rotary_dim] (angles in float32); the
    first half of the signed sin is negated, which ``_rotate`` needs (computed once here
    instead of negating half of every query and key)."""
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    sin = angles.sin().to(dtype)
    half = sin.shape[-1] // 2
    return angles.cos().to(dtype), torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary on the first rotary_dim channels of every head ("rotate half" pairing:
    x * cos + [-x2, x1] * sin, written [x2, x1] * signed sin)."""
    rotary_dim = cos.shape[-1]
    half = rotary_dim // 2
    if rotary_dim == x.shape[-1]:
        return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * signed_sin
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    swapped = torch.cat([rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([rot * cos + swapped * signed_sin, rest], dim=-1)


@dataclass
class _Attention:
    """What a stack call's slots attend to. ``mask`` [B, 1, S, keys] bool (True = may attend)
    or None: then ``causal`` over this call's S slots (a pass without padding), or every key
    (one new slot after a cache without padding). With ``cache``, the keys are the cache's
    slots (from index ``cache_offset`` + layer) followed by this call's, which it stores."""

    mask: Optional[torch.Tensor] = None
    causal: bool = False
    cache: Optional["PonderLM2Cache"] = None
    cache_offset: int = 0


def _attend(q, k, v, attention: _Attention, layer: int):
    """q [B, h, S, d], k/v [B, g, S, d] (this call's slots) -> [B, S, h * d]."""
    if attention.cache is not None:
        k, v = attention.cache.append(attention.cache_offset + layer, k, v)
    group = q.shape[1] // k.shape[1]
    shared = {}
    if group > 1 and _SDPA_SHARES_KV_HEADS:
        shared = {"enable_gqa": True}
    elif group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention.mask,
                                         is_causal=attention.causal, **shared)
    batch, heads, length, width = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * width)


class LlamaAttention(nn.Module):
    def __init__(self, config: PonderLM2Config):
        super().__init__()
        self.heads, self.groups, self.head_dim = (config.num_attention_heads,
                                                  config.num_key_value_heads, config.head_dim)
        bias = bool(config.attention_bias)
        width = config.hidden_size
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, self.groups * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, self.groups * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=bias)

    def forward(self, x, cos, sin, attention, layer):
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.groups, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.groups, self.head_dim).transpose(1, 2)
        return self.o_proj(_attend(_rotate(q, cos, sin), _rotate(k, cos, sin), v, attention,
                                   layer))


class GPTNeoXAttention(nn.Module):
    def __init__(self, config: PonderLM2Config):
        super().__init__()
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        width = config.hidden_size
        self.query_key_value = nn.Linear(width, 3 * width, bias=bool(config.attention_bias))
        self.dense = nn.Linear(width, width, bias=bool(config.attention_bias))

    def forward(self, x, cos, sin, attention, layer):
        batch, length, _ = x.shape
        # Fused projection laid out per head as [q, k, v].
        qkv = self.query_key_value(x).view(batch, length, self.heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)
        return self.dense(_attend(_rotate(q, cos, sin), _rotate(k, cos, sin), v, attention,
                                  layer))


class LlamaMLP(nn.Module):
    def __init__(self, config: PonderLM2Config):
        super().__init__()
        width, inner, bias = config.hidden_size, config.intermediate_size, False
        self.gate_proj = nn.Linear(width, inner, bias=bias)
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.down_proj = nn.Linear(inner, width, bias=bias)
        self.act = _activation(config.hidden_act)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: PonderLM2Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _activation(config.hidden_act)

    def forward(self, x):
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class PonderLM2LlamaLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: PonderLM2Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x, cos, sin, attention, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attention, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class PonderLM2GPTNeoXLayer(nn.Module):
    """GPT-NeoX block: parallel residual x + attn(ln1(x)) + mlp(ln2(x)), or sequential."""

    def __init__(self, config: PonderLM2Config):
        super().__init__()
        self.parallel = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attention = GPTNeoXAttention(config)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, x, cos, sin, attention, layer):
        attn = self.attention(self.input_layernorm(x), cos, sin, attention, layer)
        if self.parallel:
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


# ------------------------------------------------------------------------------------ the cache
class PonderLM2Cache:
    """Keys and values of every slot fed so far, per layer (per loop and layer for the Loop
    baseline), plus what decoding needs: which slots are real (not padding), each row's next
    position, and the token ids consumed (to follow beam reordering).

    Each layer's keys and values live in a buffer [B, groups, capacity, head_dim] with room
    for more slots, so that a decoding step writes its slot in place instead of copying the
    whole cache; a full buffer grows by a quarter of its length (at least ``SLACK`` slots)."""

    SLACK = 64

    def __init__(self):
        self.keys: List[Optional[torch.Tensor]] = []  # buffers; slots [:length] are filled
        self.values: List[Optional[torch.Tensor]] = []
        self.lengths: List[int] = []
        self.slot_is_real: Optional[torch.Tensor] = None  # [B, slots]
        self.padded = False  # whether some slot is padding (then attention needs a mask)
        self.next_position: Optional[torch.Tensor] = None  # [B]
        self.tokens: Optional[torch.Tensor] = None  # [B, tokens]

    def append(self, index: int, key: torch.Tensor, value: torch.Tensor):
        """Store one call's keys/values [B, g, S, d] after cache ``index``'s slots; returns
        all of that cache's keys and values so far (views of the buffers)."""
        while len(self.keys) <= index:
            self.keys.append(None)
            self.values.append(None)
            self.lengths.append(0)
        start = self.lengths[index]
        end = start + key.shape[2]
        if self.keys[index] is None or self.keys[index].shape[2] < end:
            capacity = end + max(self.SLACK, end // 4)
            self.keys[index] = self._grown(self.keys[index], start, capacity, key)
            self.values[index] = self._grown(self.values[index], start, capacity, value)
        keys, values = self.keys[index], self.values[index]
        keys[:, :, start:end] = key
        values[:, :, start:end] = value
        self.lengths[index] = end
        return keys[:, :, :end], values[:, :, :end]

    @staticmethod
    def _grown(buffer: Optional[torch.Tensor], filled: int, capacity: int,
               like: torch.Tensor) -> torch.Tensor:
        batch, groups, _, width = like.shape
        grown = like.new_empty(batch, groups, capacity, width)
        if buffer is not None:
            grown[:, :, :filled] = buffer[:, :, :filled]
        return grown

    def get_seq_length(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]

    def select(self, rows: torch.Tensor) -> "PonderLM2Cache":
        """Keep/reorder/duplicate batch rows (beam search)."""
        out = PonderLM2Cache()
        out.keys = [None if k is None else k.index_select(0, rows.to(k.device))
                    for k in self.keys]
        out.values = [None if v is None else v.index_select(0, rows.to(v.device))
                      for v in self.values]
        out.lengths, out.padded = list(self.lengths), self.padded
        for name in ("slot_is_real", "next_position", "tokens"):
            tensor = getattr(self, name)
            setattr(out, name, tensor.index_select(0, rows.to(tensor.device)))
        return out

    def reorder_cache(self, beam_idx: torch.Tensor):
        selected = self.select(beam_idx)
        self.__dict__.update(selected.__dict__)

    def __len__(self):
        return self.get_seq_length()


@dataclass
class PonderLM2CausalLMOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    ponder_cache: Optional[PonderLM2Cache] = None
    jacobi_iterations: Optional[int] = None
    """Jacobi passes the forward ran (fixed J, or where adaptive Jacobi stopped)."""
    thought_change: Optional[float] = None
    """Adaptive Jacobi: max abs change of the fed-back thoughts in its last Jacobi pass."""


# ------------------------------------------------------------------------------------ the model
class PonderLM2PreTrainedModel(PreTrainedModel):
    config_class = PonderLM2Config
    _no_split_modules = ["PonderLM2LlamaLayer", "PonderLM2GPTNeoXLayer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        # torch.nn.init (not .data): transformers then skips weights it loaded.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif getattr(module, "pause_embedding", None) is not None:
            nn.init.normal_(module.pause_embedding, 0.0, std)


class PonderLM2Model(PonderLM2PreTrainedModel):
    """Embedding, decoder layers and final norm with the Llama or GPT-NeoX parameter names
    (``embed_tokens``/``layers``/``norm`` or ``embed_in``/``layers``/``final_layer_norm``)."""

    def __init__(self, config: PonderLM2Config):
        super().__init__(config)
        neox = config.arch == "gpt_neox"
        embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        layer = PonderLM2GPTNeoXLayer if neox else PonderLM2LlamaLayer
        self.layers = nn.ModuleList(layer(config) for _ in range(config.num_hidden_layers))
        norm = (nn.LayerNorm(config.hidden_size, eps=config.norm_eps) if neox
                else RMSNorm(config.hidden_size, config.norm_eps))
        self._embedding_name = "embed_in" if neox else "embed_tokens"
        self._norm_name = "final_layer_norm" if neox else "norm"
        setattr(self, self._embedding_name, embedding)
        setattr(self, self._norm_name, norm)
        self.rotary_dim = int(config.head_dim * config.partial_rotary_factor)
        self._inv_freq: Optional[torch.Tensor] = None  # made on first use, on its device
        self.post_init()

    def get_input_embeddings(self):
        return getattr(self, self._embedding_name)

    def set_input_embeddings(self, value):
        setattr(self, self._embedding_name, value)

    @property
    def final_norm(self):
        return getattr(self, self._norm_name)

    def rotary(self, positions: torch.Tensor, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin [B, 1, S, rotary_dim] of positions [B, S] (``_rotary_tables``)."""
        if self._inv_freq is None or self._inv_freq.device != positions.device:
            self._inv_freq = _inverse_frequencies(self.rotary_dim, self.config.rope_theta,
                                                  positions.device)
        return _rotary_tables(positions, self._inv_freq, dtype)

    def stack(self, x, rotary: Tuple[torch.Tensor, torch.Tensor], attention: _Attention,
              final_norm: bool = True):
        """All layers (+ the final norm) on slots x [B, S, H] with their rotary tables,
        attending as ``attention`` says."""
        cos, sin = rotary
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attention, index)
        return self.final_norm(x) if final_norm else x


def _token_positions(token_is_real: torch.Tensor) -> torch.Tensor:
    """First real token of a row at position 0; padding gets 0."""
    return (token_is_real.long().cumsum(dim=1) - 1).clamp(min=0)


def _pass_mask(slot_is_real: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] bool: causal, padded keys hidden, every query sees itself (so padded
    queries stay finite)."""
    length = slot_is_real.shape[1]
    device = slot_is_real.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = (causal[None] & slot_is_real[:, None, :]) | torch.eye(length, dtype=torch.bool,
                                                                 device=device)[None]
    return mask[:, None]


def _splice(embeddings: torch.Tensor, previous: torch.Tensor, num_slots: int) -> torch.Tensor:
    """[e_t, z_t^1..z_t^{n-1}] per token: z_t^s is ``previous``'s output at slot s-1 of t."""
    batch, length, width = embeddings.shape
    thoughts = previous.view(batch, length, -1, width)[:, :, :num_slots - 1]
    return torch.cat([embeddings[:, :, None], thoughts], dim=2).view(batch, -1, width)


def _slot(hidden: torch.Tensor, num_slots: int, slot: int) -> torch.Tensor:
    batch, rows, width = hidden.shape
    return hidden.view(batch, rows // num_slots, num_slots, width)[:, :, slot]


def _default_tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


class PonderLM2ForCausalLM(PonderLM2PreTrainedModel, GenerationMixin):
    """PonderLM-2 with a language-model head, for both architectures. Parameter names are
    those of transformers' ``LlamaForCausalLM`` (``model.*``, ``lm_head``) or
    ``GPTNeoXForCausalLM`` (``gpt_neox.*``, ``embed_out``), plus ``pause_embedding`` for the
    Pause baseline, except that the base model is ``ponderlm2.*`` unless the config computes
    what the vanilla class does (``computes_vanilla``): the vanilla class, given this folder
    explicitly, then finds none of its decoder weights and reports them missing, instead of
    loading them all into a forward that is not this model's."""

    base_model_prefix = PONDER_BASE_NAME

    def __init__(self, config: PonderLM2Config):
        super().__init__(config)
        neox = config.arch == "gpt_neox"
        vanilla_base, self._head_name = ("gpt_neox", "embed_out") if neox \
            else ("model", "lm_head")
        self._base_name = vanilla_base if config.computes_vanilla else PONDER_BASE_NAME
        self.base_model_prefix = self._base_name
        setattr(self, self._base_name, PonderLM2Model(config))
        setattr(self, self._head_name,
                nn.Linear(config.hidden_size, config.vocab_size, bias=False))
        self.pause_embedding = (nn.Parameter(torch.zeros(config.hidden_size))
                                if config.forward_method == "pause" else None)
        self.post_init()

    # -- transformers plumbing
    @property
    def _ponder_base(self) -> PonderLM2Model:
        return getattr(self, self._base_name)

    def get_input_embeddings(self):
        return self._ponder_base.get_input_embeddings()

    def set_input_embeddings(self, value):
        self._ponder_base.set_input_embeddings(value)

    def get_output_embeddings(self):
        return getattr(self, self._head_name)

    def set_output_embeddings(self, value):
        setattr(self, self._head_name, value)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model keeps its own PonderLM2Cache

    # -- the passes
    def _ponder_embed(self, input_ids):
        embeddings = self.get_input_embeddings()(input_ids)
        multiplier = self.config.embedding_multiplier
        return embeddings * multiplier if multiplier != 1.0 else embeddings

    def _pause_slots(self, embeddings, count: int):
        batch, length, width = embeddings.shape
        pause = (self.pause_embedding * self.config.embedding_multiplier).to(embeddings.dtype)
        return pause.expand(batch, length * count, width)

    def _ponder_jacobi_schedule(self, jacobi_iterations, jacobi_tolerance, max_jacobi_iterations):
        """-> (iterations or cap, tolerance or None)."""
        config = self.config
        if jacobi_iterations is None and config.jacobi_tolerance is not None:
            jacobi_iterations = ADAPTIVE
        if isinstance(jacobi_iterations, str) and jacobi_iterations != ADAPTIVE:
            jacobi_iterations = int(jacobi_iterations)
        if jacobi_iterations == ADAPTIVE:
            tolerance = jacobi_tolerance if jacobi_tolerance is not None else (
                config.jacobi_tolerance if config.jacobi_tolerance is not None
                else _default_tolerance(self.dtype))
            cap = (max_jacobi_iterations if max_jacobi_iterations is not None
                   else config.max_jacobi_iterations)
            return int(cap), float(tolerance)
        if jacobi_tolerance is not None or max_jacobi_iterations is not None:
            raise ValueError("jacobi_tolerance / max_jacobi_iterations need "
                             "jacobi_iterations='adaptive'")
        iterations = config.num_jacobi_iterations if jacobi_iterations is None \
            else int(jacobi_iterations)
        if iterations < 0:
            raise ValueError(f"jacobi_iterations must be >= 0, got {iterations}")
        return iterations, None

    def _ponder_prefill(self, input_ids, token_is_real, schedule, cache: Optional[PonderLM2Cache]):
        """All passes over the prompt; the last pass writes ``cache``. Returns the stack output
        that scores each token [B, L, H] and (Jacobi passes, thought change)."""
        decoder, k = self._ponder_base, self.config.thoughts
        method = self.config.forward_method
        embeddings = self._ponder_embed(input_ids)
        padded = not bool(token_is_real.all())
        token_rotary = decoder.rotary(_token_positions(token_is_real), embeddings.dtype)
        tables = {}  # slots per token -> (rotary, mask) of the passes with that many

        def run(inputs, num_slots, cache=None, cache_offset=0, final_norm=True):
            if num_slots not in tables:
                tables.clear()  # growth passes differ; the Jacobi and final passes share
                mask = (_pass_mask(token_is_real.repeat_interleave(num_slots, dim=1))
                        if padded else None)
                rotary = tuple(table.repeat_interleave(num_slots, dim=2) if num_slots > 1
                               else table for table in token_rotary)
                tables[num_slots] = rotary, mask
            rotary, mask = tables[num_slots]
            return decoder.stack(inputs, rotary,
                                 _Attention(mask, not padded, cache, cache_offset), final_norm)

        if cache is not None:
            slots = 1 if method == "loop" else k + 1
            cache.padded = padded
            cache.slot_is_real = token_is_real.repeat_interleave(slots, dim=1)
            cache.next_position = token_is_real.long().sum(dim=1)
            cache.tokens = input_ids
        if method == "pause":
            hidden = run(_splice(embeddings, self._pause_slots(embeddings, k), k + 1), k + 1,
                         cache)
            return _slot(hidden, k + 1, k), (0, None)
        if method == "loop":
            hidden = embeddings
            layers = self.config.num_hidden_layers
            for loop in range(k + 1):
                hidden = run(hidden, 1, cache, loop * layers, final_norm=loop == k)
            return hidden, (0, None)

        iterations, tolerance = schedule
        schedule_slots = [1] if k == 0 else list(range(1, k + 1)) + [k + 1] * (iterations + 1)
        hidden, jacobi, change = None, 0, None
        for index, num_slots in enumerate(schedule_slots[:-1] if k else []):
            inputs = embeddings if hidden is None else _splice(embeddings, hidden, num_slots)
            new = run(inputs, num_slots)
            if index >= k:
                jacobi += 1
                if tolerance is not None:
                    change = self._thought_change(hidden, new, k, token_is_real)
                    if change <= tolerance:
                        hidden = new
                        break
            hidden = new
        final_slots = k + 1
        inputs = embeddings if hidden is None else _splice(embeddings, hidden, final_slots)
        hidden = run(inputs, final_slots, cache)
        return _slot(hidden, final_slots, k), (jacobi, change)

    @staticmethod
    def _thought_change(before, after, k, token_is_real) -> float:
        batch, _, width = after.shape
        length = token_is_real.shape[1]
        delta = (after.view(batch, length, -1, width)[:, :, :k].float()
                 - before.view(batch, length, -1, width)[:, :, :k].float())
        change = delta.abs().amax(dim=(2, 3)) * token_is_real
        return float(change.max()) if change.numel() else 0.0

    def _ponder_decode(self, token_ids, cache: PonderLM2Cache):
        """One token per row [B] through K+1 single-slot steps; returns the scoring output
        [B, H] and appends the slots to ``cache``."""
        decoder, k = self._ponder_base, self.config.thoughts
        method = self.config.forward_method
        hidden = self._ponder_embed(token_ids[:, None])
        # The K+1 steps share the token's position: one rotary table.
        rotary = decoder.rotary(cache.next_position[:, None], hidden.dtype)
        loop = method == "loop"
        new_slots = 1 if loop else k + 1  # slots this token adds to each cache
        cached = cache.slot_is_real.shape[1]
        cache.slot_is_real = torch.cat(
            [cache.slot_is_real, cache.slot_is_real.new_ones(len(token_ids), new_slots)], dim=1)

        def attention(step: int, cache_offset: int = 0) -> _Attention:
            # One new slot sees every cached real slot and itself: without padding, no mask.
            mask = (cache.slot_is_real[:, None, None, :cached + step + 1] if cache.padded
                    else None)
            return _Attention(mask, False, cache, cache_offset)

        if loop:
            layers = self.config.num_hidden_layers
            for index in range(k + 1):
                hidden = decoder.stack(hidden, rotary, attention(0, index * layers),
                                       final_norm=index == k)
        else:
            pause = self._pause_slots(hidden, 1) if method == "pause" else None
            for step in range(k + 1):
                inputs = pause if step and pause is not None else hidden
                hidden = decoder.stack(inputs, rotary, attention(step))
        cache.next_position = cache.next_position + 1
        cache.tokens = torch.cat([cache.tokens, token_ids[:, None]], dim=1)
        return hidden[:, 0]

    def forward(self, input_ids: Optional[torch.LongTensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.LongTensor] = None,
                ponder_cache: Optional[PonderLM2Cache] = None,
                use_cache: Optional[bool] = None,
                logits_to_keep: Union[int, torch.Tensor] = 0,
                jacobi_iterations: Union[int, str, None] = None,
                jacobi_tolerance: Optional[float] = None,
                max_jacobi_iterations: Optional[int] = None,
                return_dict: Optional[bool] = None,
                inputs_embeds: Optional[torch.Tensor] = None,
                **kwargs) -> Union[PonderLM2CausalLMOutput, tuple]:
        """Score ``input_ids`` [B, L] (logits of every position, from slot K).

        ``attention_mask`` [B, L]: 1 = token, 0 = padding. ``jacobi_iterations``: None (the
        config's), an int J, or ``"adaptive"`` (``jacobi_tolerance``,
        ``max_jacobi_iterations``). ``use_cache``: also return a ``PonderLM2Cache`` to continue
        from; ``ponder_cache``: feed ``input_ids`` (the new tokens only) after that cache.
        """
        if inputs_embeds is not None:
            raise NotImplementedError("PonderLM-2 needs input_ids (inputs_embeds is not "
                                      "supported: thoughts are built from token embeddings)")
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("input_ids must be a LongTensor [batch, length]")
        jacobi, change = None, None
        if ponder_cache is not None and ponder_cache.tokens is not None:
            cache = ponder_cache
            hidden = torch.stack([self._ponder_decode(input_ids[:, i], cache)
                                  for i in range(input_ids.shape[1])], dim=1)
        else:
            if attention_mask is None:
                token_is_real = torch.ones_like(input_ids, dtype=torch.bool)
            else:
                if attention_mask.shape != input_ids.shape:
                    raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != "
                                     f"input_ids {tuple(input_ids.shape)}")
                token_is_real = attention_mask.to(device=input_ids.device, dtype=torch.bool)
            use_cache = self.config.use_cache if use_cache is None else use_cache
            cache = PonderLM2Cache() if use_cache else None
            schedule = self._ponder_jacobi_schedule(jacobi_iterations, jacobi_tolerance,
                                             max_jacobi_iterations)
            hidden, (jacobi, change) = self._ponder_prefill(input_ids, token_is_real, schedule, cache)
        if isinstance(logits_to_keep, int):
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            kept = hidden[:, logits_to_keep]
        logits = self.get_output_embeddings()(kept).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device),
                                   ignore_index=-100)
        out = PonderLM2CausalLMOutput(loss=loss, logits=logits, ponder_cache=cache,
                                      jacobi_iterations=jacobi, thought_change=change)
        return out if return_dict is not False else out.to_tuple()

    # -- generation
    def prepare_inputs_for_generation(self, input_ids, attention_mask=None,
                                      ponder_cache: Optional[PonderLM2Cache] = None,
                                      use_cache: Optional[bool] = None, **kwargs):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        inputs = {"attention_mask": attention_mask, "use_cache": use_cache}
        for name in ("jacobi_iterations", "jacobi_tolerance", "max_jacobi_iterations",
                     "logits_to_keep"):
            if kwargs.get(name) is not None:
                inputs[name] = kwargs[name]
        cache = self._ponder_follow(ponder_cache, input_ids) if use_cache else None
        if cache is None:
            inputs["input_ids"] = input_ids  # prefill, or a full recomputation
        else:
            fed = cache.get_seq_length()
            inputs.update(input_ids=input_ids[:, fed:], ponder_cache=cache)
            inputs.pop("jacobi_iterations", None)
        return inputs

    @staticmethod
    def _ponder_follow(cache: Optional[PonderLM2Cache], input_ids) -> Optional[PonderLM2Cache]:
        """The cache rows for ``input_ids``' prefixes (generate may have reordered, expanded or
        dropped rows: beam search), or None when some row's prefix is not cached."""
        if cache is None or cache.tokens is None:
            return None
        fed = cache.tokens.shape[1]
        if input_ids.shape[1] <= fed:
            return None
        prefix = input_ids[:, :fed].to(cache.tokens.device)
        if prefix.shape == cache.tokens.shape and torch.equal(prefix, cache.tokens):
            return cache
        same = (prefix[:, None, :] == cache.tokens[None, :, :]).all(dim=-1)  # [new, old]
        if not bool(same.any(dim=1).all()):
            return None
        return cache.select(same.float().argmax(dim=1))

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs,
                                                                   *args, **kwargs)
        model_kwargs["ponder_cache"] = getattr(outputs, "ponder_cache", None)
        return model_kwargs

