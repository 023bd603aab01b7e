"""Dataclass configs for the model and the PonderLM-2 method.

``ModelConfig`` describes the transformer (one of two architectures); ``PonderConfig`` the
latent-thought schedule. ``build_transformer_config`` turns them into megatron-core's
TransformerConfig, the single place where paper settings (init std, output-layer scaling) and
CPU-safe megatron switches are decided.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from megatron_ponder.flags import Freezable, option
from megatron_ponder.methods import METHODS, VANILLA, Method, get_method

ARCHITECTURES = ("llama", "gpt_neox")

# Recipes for drawing J per micro-batch (the paper: Llama {2,3}, GPT-NeoX/Pythia {2,3,4}).
RANDOM_JACOBI_RECIPES = {"llama": (2, 3), "gpt_neox": (2, 3, 4)}


@dataclass
class PonderConfig(Freezable):
    """How many latent thoughts and Jacobi passes the forward runs."""

    num_latent_thoughts: int = option(1, "K: latent-thought slots per token (0 = one pass)")
    jacobi_iterations: int = option(
        3, "J: Jacobi passes between the growth passes and the final pass; used for evaluation "
        "and in training when --random-jacobi-iterations is not given")
    random_jacobi_iterations: Tuple[int, ...] = option(
        (), "training: draw J per micro-batch uniformly from these values (paper: 2 3 for "
        "llama, 2 3 4 for gpt_neox; --random-jacobi-iterations with no values picks the "
        "architecture's recipe)")
    scale_embeds: bool = option(True, "multiply word embeddings by sqrt(2.5 * hidden size)")
    vanilla: bool = option(False, "plain causal-LM baseline: one pass, no thoughts, no scaling")
    ponder_method: str = option(
        "ponderlm2", "what the K extra slots/passes are: " + "; ".join(
            f"'{name}': {method.summary}" for name, method in METHODS.items()),
        choices=tuple(METHODS))
    ponder_grad_passes: Optional[int] = option(
        None, "training: backpropagate through the last N passes only; earlier passes run "
        "without building a graph (cheaper; default: all passes, the paper)")
    ponder_warmup_iters: int = option(
        0, "training: run the first N iterations as a one-pass K=0 model, then with K latent "
        "thoughts (a cheaper start; 0 = thoughts from the first step, the paper)")

    def __post_init__(self):
        self.random_jacobi_iterations = tuple(int(j) for j in self.random_jacobi_iterations)
        if get_method(self.ponder_method).thoughtless:  # --ponder-method vanilla = --vanilla
            self.vanilla = True
        if self.ponder_grad_passes is not None and self.ponder_grad_passes < 1:
            raise ValueError(f"ponder_grad_passes must be >= 1, got {self.ponder_grad_passes}")
        if self.ponder_warmup_iters < 0:
            raise ValueError(f"ponder_warmup_iters must be >= 0, got {self.ponder_warmup_iters}")
        if self.num_latent_thoughts < 0:
            raise ValueError(f"num_latent_thoughts must be >= 0, got {self.num_latent_thoughts}")
        if self.jacobi_iterations < 0:
            raise ValueError(f"jacobi_iterations must be >= 0, got {self.jacobi_iterations}")
        if any(j < 0 for j in self.random_jacobi_iterations):
            raise ValueError(f"random_jacobi_iterations must be >= 0: "
                             f"{self.random_jacobi_iterations}")

    @property
    def thoughts(self) -> int:
        """K as the forward uses it (vanilla has none)."""
        return 0 if self.vanilla else self.num_latent_thoughts

    @property
    def method(self) -> Method:
        """The registered method of the forward (``megatron_ponder.methods``)."""
        return VANILLA if self.vanilla else get_method(self.ponder_method)

    @property
    def computes_vanilla(self) -> bool:
        """One pass with unscaled embeddings: a plain causal LM's forward."""
        return self.thoughts == 0 and self.embedding_scale_factor == 0.0

    def thoughts_at(self, iteration: int, training: bool = True) -> int:
        """K of a training iteration (0 during --ponder-warmup-iters); K for evaluation."""
        if training and iteration < self.ponder_warmup_iters:
            return 0
        return self.thoughts

    @property
    def embedding_scale_factor(self) -> float:
        """c in e = sqrt(c * H) * E[x] (the method's: 2.5 for PonderLM-2 and Loop, 1 for
        Pause, as the official baselines), 0 for no scaling."""
        return self.method.scale_factor(self.thoughts) if self.scale_embeds else 0.0


@dataclass
class ModelConfig(Freezable):
    """Transformer shape and architecture (Llama or GPT-NeoX/Pythia)."""

    arch: str = option("llama", "model architecture", flag="--model-arch", choices=ARCHITECTURES)
    num_layers: int = option(2, "decoder layers")
    hidden_size: int = option(64, "hidden size H")
    num_attention_heads: int = option(4, "attention heads")
    num_query_groups: Optional[int] = option(
        None, "key/value heads for grouped-query attention (default: one per attention head)")
    ffn_hidden_size: Optional[int] = option(
        None, "MLP hidden size (default: 4H for gpt_neox, the Llama 8H/3 rule rounded up to 256)")
    kv_channels: Optional[int] = option(None, "head dimension (default: H / heads)")
    vocab_size: int = option(50304, "rows of the embedding and output layer (already padded)",
                           cli=False)
    rotary_percent: Optional[float] = option(
        None, "fraction of each head's channels with rotary (default: 1.0 llama, 0.25 gpt_neox)")
    rotary_base: float = option(10000.0, "rotary base (theta)")
    norm_epsilon: float = option(1e-5, "RMSNorm / LayerNorm epsilon")
    parallel_residual: Optional[bool] = option(
        None, "GPT-NeoX parallel residual (default on for gpt_neox)", cli=False)
    init_method_std: Optional[float] = option(None, "init std (default: the paper's sqrt(2/(5H)))")
    params_dtype: torch.dtype = option(torch.float32, "parameter dtype", cli=False)
    bf16: bool = option(False, "bfloat16 parameters and compute (fp32 master weights)")
    fp16: bool = option(False, "float16 parameters and compute (fp32 master weights, loss "
                      "scaling: --loss-scale or dynamic)")

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {ARCHITECTURES}")
        for name in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                     "ffn_hidden_size", "kv_channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        neox = self.arch == "gpt_neox"
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}")
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible "
                             f"by num_query_groups {self.num_query_groups}")
        if self.ffn_hidden_size is None:
            if neox:
                self.ffn_hidden_size = 4 * self.hidden_size
            else:
                self.ffn_hidden_size = 256 * math.ceil(8 * self.hidden_size / 3 / 256)
        if self.rotary_percent is None:
            self.rotary_percent = 0.25 if neox else 1.0
        if self.parallel_residual is None:
            self.parallel_residual = neox
        if self.parallel_residual and not neox:
            raise ValueError("parallel_residual is a gpt_neox feature; llama is sequential")
        if self.init_method_std is None:
            self.init_method_std = math.sqrt(2.0 / (5.0 * self.hidden_size))


@dataclass
class ParallelConfig(Freezable):
    """Model-parallel sizes (data parallel is whatever is left of the world)."""

    tensor_model_parallel_size: int = option(1, "tensor-parallel size")
    pipeline_model_parallel_size: int = option(1, "pipeline-parallel size")
    sequence_parallel: bool = option(False, "sequence parallelism (needs tensor parallel > 1)")


def _normal_init(std: float):
    def init_(tensor):
        return torch.nn.init.normal_(tensor, mean=0.0, std=std)
    return init_


def output_init_std(model: ModelConfig, ponder: PonderConfig) -> float:
    """Std of the attention/MLP output projections.

    Both recipes divide by sqrt(2 * num_layers) (one residual add per sub-layer); the GPT-NeoX
    PonderLM-2 recipe also divides by sqrt(K+1), the number of slots that feed back.
    """
    layers = 2 * model.num_layers
    if model.arch == "gpt_neox":
        layers *= ponder.thoughts + 1
    return model.init_method_std / math.sqrt(layers)


def build_transformer_config(model: ModelConfig, ponder: PonderConfig,
                             parallel: Optional[ParallelConfig] = None, **overrides):
    """megatron-core TransformerConfig for ``model`` (imported lazily: megatron is heavy)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel = parallel or ParallelConfig()
    neox = model.arch == "gpt_neox"
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.kv_channels,
        normalization="LayerNorm" if neox else "RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=not neox,
        activation_func=F.gelu if neox else F.silu,
        add_bias_linear=neox,
        add_qkv_bias=neox,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        init_method=_normal_init(model.init_method_std),
        output_layer_init_method=_normal_init(output_init_std(model, ponder)),
        embedding_init_method=_normal_init(model.init_method_std),
        params_dtype=model.params_dtype,
        bf16=model.bf16,
        fp16=model.fp16,
        # Device-independent initialisation (and the only one that works on CPU). The model
        # then re-draws every weight from the seed alone (model/init.py), so that every
        # tensor- and pipeline-parallel layout starts from the one-process weights.
        use_cpu_initialization=True,
        # Fusions need CUDA kernels (apex/TE); the unfused paths are exact and portable.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        rotary_interleaved=False,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        # dtype of the activations pipeline stages exchange (required by megatron for PP > 1).
        pipeline_dtype=model.params_dtype,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)
