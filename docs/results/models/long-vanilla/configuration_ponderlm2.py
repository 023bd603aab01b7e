"""Configuration of PonderLM-2 language models (arXiv 2509.23184) for Hugging Face transformers.

Self-contained: needs only ``transformers``. Every model folder exported by megatron_ponder
carries a copy of this file next to ``modeling_ponderlm2.py``; ``config.json`` names both in
``auto_map`` so that ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
builds the model.

``arch`` picks the decoder block: ``"llama"`` (RMSNorm, SwiGLU MLP, grouped-query attention,
full rotary) or ``"gpt_neox"`` (LayerNorm with bias, GeLU MLP, fused QKV, partial rotary,
parallel residual). The PonderLM-2 fields:

* ``num_latent_thoughts`` (K): latent thoughts per token; each token owns K+1 slots.
* ``num_jacobi_iterations`` (J): Jacobi passes between the K growth passes and the final pass.
* ``jacobi_tolerance``: None for a fixed J; a number for adaptive Jacobi (stop once the fed-back
  thoughts change by at most this, capped at ``max_jacobi_iterations`` passes).
* ``recurrent_model``: False = a vanilla causal LM (no thoughts, no embedding scale).
* ``scale_embeds``: multiply word embeddings by sqrt(2.5 H) (sqrt(H) for the Pause baseline).
* ``ponder_method``: ``"ponderlm2"``, or the paper's baselines ``"pause"`` / ``"loop"``.
"""

import math

from transformers import PretrainedConfig

ARCHITECTURES = ("llama", "gpt_neox")
# c in e = sqrt(c * H) * E[x] of each method with K > 0 (with K = 0 every method is PonderLM-2's
# one-pass model, c = 2.5). This file must run without megatron_ponder, so it keeps this copy of
# the method registry's values; tests/hf/test_transformers_native.py checks that they agree.
EMBEDDING_SCALE = {"ponderlm2": 2.5, "pause": 1.0, "loop": 2.5}
PONDER_METHODS = tuple(EMBEDDING_SCALE)


class PonderLM2Config(PretrainedConfig):
    model_type = "ponderlm2"
    keys_to_ignore_at_inference = ["ponder_cache"]

    def __init__(self, arch="llama", vocab_size=50304, hidden_size=768, intermediate_size=None,
                 num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=None,
                 head_dim=None, hidden_act=None, norm_eps=1e-5, rope_theta=10000.0,
                 partial_rotary_factor=None, use_parallel_residual=None, attention_bias=None,
                 max_position_embeddings=2048, initializer_range=0.02,
                 num_latent_thoughts=1, num_jacobi_iterations=3, jacobi_tolerance=None,
                 max_jacobi_iterations=32, recurrent_model=True, scale_embeds=True,
                 ponder_method="ponderlm2", random_jacobi_iterations=False,
                 tie_word_embeddings=False, use_cache=True, **kwargs):
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
        if ponder_method not in PONDER_METHODS:
            raise ValueError(f"ponder_method must be one of {PONDER_METHODS}, got "
                             f"{ponder_method!r}")
        if tie_word_embeddings:
            raise ValueError("PonderLM-2 models have untied input and output embeddings")
        if num_latent_thoughts < 0 or num_jacobi_iterations < 0:
            raise ValueError("num_latent_thoughts and num_jacobi_iterations must be >= 0")
        neox = arch == "gpt_neox"
        self.arch = arch
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size or (4 * hidden_size if neox else
                                                       256 * -(-8 * hidden_size // (3 * 256)))
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = (num_attention_heads if neox or num_key_value_heads is None
                                    else num_key_value_heads)
        self.head_dim = (hidden_size // num_attention_heads if neox or head_dim is None
                         else head_dim)
        self.hidden_act = hidden_act or ("gelu" if neox else "silu")
        self.norm_eps = norm_eps
        self.rope_theta = rope_theta
        self.partial_rotary_factor = (partial_rotary_factor if partial_rotary_factor is not None
                                      else (0.25 if neox else 1.0))
        self.use_parallel_residual = (neox if use_parallel_residual is None
                                      else use_parallel_residual)
        self.attention_bias = neox if attention_bias is None else attention_bias
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.num_latent_thoughts = num_latent_thoughts
        self.num_jacobi_iterations = num_jacobi_iterations
        self.jacobi_tolerance = jacobi_tolerance
        self.max_jacobi_iterations = max_jacobi_iterations
        self.recurrent_model = recurrent_model
        self.scale_embeds = scale_embeds
        self.ponder_method = ponder_method
        self.random_jacobi_iterations = random_jacobi_iterations
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=False, **kwargs)

    @property
    def thoughts(self) -> int:
        """K as the forward uses it (0 for a vanilla model)."""
        return self.num_latent_thoughts if self.recurrent_model else 0

    @property
    def computes_vanilla(self) -> bool:
        """One pass over the tokens with unscaled embeddings: what transformers'
        ``LlamaForCausalLM`` / ``GPTNeoXForCausalLM`` compute with the same weights."""
        return self.thoughts == 0 and self.embedding_multiplier == 1.0

    @property
    def embedding_multiplier(self) -> float:
        """e = multiplier * E[x]: sqrt(2.5 H) (PonderLM-2, Loop), sqrt(H) (Pause), 1 (vanilla or
        scale_embeds false)."""
        if not self.recurrent_model or not self.scale_embeds:
            return 1.0
        factor = EMBEDDING_SCALE[self.forward_method]
        return math.sqrt(factor * self.hidden_size)

    @property
    def forward_method(self) -> str:
        """The method the forward runs: ``ponder_method``, or PonderLM-2's one pass when K = 0."""
        return self.ponder_method if self.thoughts else "ponderlm2"
