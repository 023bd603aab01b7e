"""How the model runs on this machine: layers, kernels, fusions and where weights are made.

One function, ``choose_execution_path``, decides it from three things: the device (CUDA or
not), what is importable (Transformer Engine, apex's fused weight-gradient kernel) and
Megatron-LM's flags (``--transformer-impl``, ``--attention-backend``,
``--cross-entropy-loss-fusion``, ``--use-cpu-initialization``, ``--no-*-fusion``, ...), with
Megatron-LM's defaults. Three paths come out of it:

* CPU: megatron-core's local layers, our float32 norms, SDPA attention, every fusion off,
  weights made on the host. The parity and determinism tests run this path.
* CUDA without Transformer Engine: the same local layers, torch SDPA (flash or memory-efficient
  kernels), megatron-core's TE-free fusions (bias + activation, bias + dropout + add,
  fused cross entropy when asked), parameters allocated on the GPU.
* CUDA with Transformer Engine: TE's fused norm + linear for QKV and FC1, TE linears, TE core
  attention (the causal mask over the flat (K+1)L slots is TE's plain causal mask; repeated
  positions only change the rotary table), TE's fused RoPE, the fusions above, gradient
  accumulation fused into the weight-gradient GEMM (with apex), parameters on the GPU.

Whatever the path, parameter names in checkpoints are the local path's (``CANONICAL_PREFIXES``
maps TE's fused norm weights back), and the initial weights are drawn from per-parameter seeds
where the parameters live (``model/init.py``), so they do not depend on the path or the layout.
"""

import importlib.util
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch

ATTENTION_BACKENDS = ("auto", "flash", "fused", "unfused", "local")
CROSS_ENTROPY_IMPLS = ("native", "te")

# Transformer Engine's fused norm + linear keeps the norm's weights inside the linear layer;
# checkpoints, the initialization and the Hugging Face mapping use the separate norm's names.
CANONICAL_PREFIXES: Dict[str, str] = {
    "self_attention.linear_qkv.layer_norm_": "input_layernorm.",
    "mlp.linear_fc1.layer_norm_": "pre_mlp_layernorm.",
}


def canonical_parameter_name(name: str) -> str:
    """``name`` as the local path spells it (identical for every local-path parameter)."""
    for fused, separate in CANONICAL_PREFIXES.items():
        position = name.find(fused)
        if position >= 0 and (position == 0 or name[position - 1] == "."):
            return name[:position] + separate + name[position + len(fused):]
    return name


@dataclass(frozen=True)
class ExecutionRequest:
    """What the run asks for, in Megatron-LM's terms (its flags and their defaults)."""

    transformer_impl: str = "transformer_engine"
    attention_backend: str = "auto"
    cross_entropy_loss_fusion: bool = False
    cross_entropy_fusion_impl: str = "native"
    use_cpu_initialization: bool = False
    gradient_accumulation_fusion: bool = True
    bias_gelu_fusion: bool = True
    bias_swiglu_fusion: bool = True
    bias_dropout_fusion: bool = True
    rope_fusion: bool = True
    bf16: bool = False
    """--bf16: megatron-core's native fused cross entropy returns bf16 logit gradients, so it
    is used only in bf16 runs."""

    def __post_init__(self):
        if self.transformer_impl not in ("local", "transformer_engine"):
            raise ValueError(f"--transformer-impl {self.transformer_impl}: choose local or "
                             "transformer_engine")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"--attention-backend {self.attention_backend}: choose one of "
                             f"{', '.join(ATTENTION_BACKENDS)}")
        if self.cross_entropy_fusion_impl not in CROSS_ENTROPY_IMPLS:
            raise ValueError(f"--cross-entropy-fusion-impl {self.cross_entropy_fusion_impl}: "
                             f"choose one of {', '.join(CROSS_ENTROPY_IMPLS)}")


@dataclass(frozen=True)
class Capabilities:
    """What this machine can run."""

    cuda: bool
    transformer_engine: bool
    """Transformer Engine importable (its modules also need CUDA)."""
    apex_gradient_accumulation: bool
    """apex's fused_weight_gradient_mlp_cuda, which megatron-core's local linears need for
    gradient-accumulation fusion."""

    @classmethod
    def detect(cls) -> "Capabilities":
        def importable(name: str) -> bool:
            try:
                return importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                return False

        return cls(cuda=torch.cuda.is_available(),
                   transformer_engine=importable("transformer_engine"),
                   apex_gradient_accumulation=importable("fused_weight_gradient_mlp_cuda"))


@dataclass(frozen=True)
class ExecutionPath:
    """The decision: which modules and kernels the model uses. ``notes`` says why each
    requested feature that is off is off (printed once at start-up)."""

    device: str
    transformer_engine: bool = False
    attention: str = "sdpa"
    """sdpa (torch scaled_dot_product_attention) or te (Transformer Engine's core attention)."""
    attention_backend: str = "auto"
    rope_fusion: bool = False
    cross_entropy: str = "unfused"
    """unfused (megatron-core's vocab-parallel cross entropy), native (megatron-core's fused
    one) or te (Transformer Engine's)."""
    bias_activation_fusion: bool = False
    bias_dropout_fusion: bool = False
    gradient_accumulation_fusion: bool = False
    device_initialization: bool = False
    """Parameters allocated on the GPU and their initial values drawn there (else on the
    host, then moved)."""
    notes: Tuple[str, ...] = field(default=())

    def summary(self) -> str:
        """One line for the start-up block."""
        linear = "TE (fused norm + linear for QKV and FC1)" if self.transformer_engine \
            else "local"
        attention = f"TE {self.attention_backend}" if self.attention == "te" else "torch SDPA"
        loss = "unfused" if self.cross_entropy == "unfused" else f"fused {self.cross_entropy}"
        fusions = [name for name, on in (("bias+activation", self.bias_activation_fusion),
                                         ("bias+dropout+add", self.bias_dropout_fusion),
                                         ("gradient accumulation",
                                          self.gradient_accumulation_fusion)) if on]
        return (f"execution ({self.device}): linear: {linear}, attention: {attention}, "
                f"RoPE: {'fused' if self.rope_fusion else 'unfused'}, "
                f"CE: {loss}, "
                f"fusions: {', '.join(fusions) or 'none'}, "
                f"init: {'device' if self.device_initialization else 'host'}")

    def transformer_config_overrides(self) -> dict:
        """TransformerConfig fields this path sets (``config.build_transformer_config`` holds
        the CPU path's values)."""
        if self.device == "cpu":
            return {}
        from megatron.core.transformer.enums import AttnBackend

        return dict(
            use_cpu_initialization=not self.device_initialization,
            bias_activation_fusion=self.bias_activation_fusion,
            bias_dropout_fusion=self.bias_dropout_fusion,
            apply_rope_fusion=self.rope_fusion,
            gradient_accumulation_fusion=self.gradient_accumulation_fusion,
            cross_entropy_loss_fusion=self.cross_entropy != "unfused",
            cross_entropy_fusion_impl="te" if self.cross_entropy == "te" else "native",
            attention_backend=getattr(AttnBackend, self.attention_backend),
        )

    def attention_environment(self) -> Dict[str, str]:
        """Transformer Engine's switches for ``--attention-backend`` (what Megatron-LM sets)."""
        if self.attention != "te":
            return {}
        flash, fused, unfused = {"auto": (1, 1, 1), "flash": (1, 0, 0), "fused": (0, 1, 0),
                                 "unfused": (0, 0, 1)}[self.attention_backend]
        return {"NVTE_FLASH_ATTN": str(flash), "NVTE_FUSED_ATTN": str(fused),
                "NVTE_UNFUSED_ATTN": str(unfused)}


CPU_PATH = ExecutionPath(device="cpu")
"""Local layers, SDPA, no fusions, host initialization: runs on any device (the default of
``build_model``; inference and conversion use it on GPUs too)."""


def choose_execution_path(request: ExecutionRequest, capabilities: Capabilities,
                          arch: str) -> ExecutionPath:
    """The execution path for a model of ``arch`` ("llama" or "gpt_neox")."""
    if not capabilities.cuda:  # the training flags' note says which flags did nothing
        return CPU_PATH
    notes = []
    use_te = request.transformer_impl == "transformer_engine" and capabilities.transformer_engine
    if request.transformer_impl == "transformer_engine" and not capabilities.transformer_engine:
        notes.append("Transformer Engine is not installed: megatron-core's local layers and "
                     "torch SDPA (pip install transformer_engine[pytorch] for TE's layers)")
    attention, backend = ("te", request.attention_backend) if use_te else ("sdpa", "auto")
    if request.attention_backend == "local":
        attention, backend = "sdpa", "auto"
    elif not use_te and request.attention_backend != "auto":
        notes.append(f"--attention-backend {request.attention_backend} needs Transformer "
                     "Engine's attention: torch SDPA picks its kernel itself")

    rope = request.rope_fusion and use_te
    if request.rope_fusion and not use_te:
        notes.append("RoPE fusion needs Transformer Engine: unfused RoPE")

    cross_entropy = "unfused"
    if request.cross_entropy_loss_fusion:
        if request.cross_entropy_fusion_impl == "te" and not use_te:
            notes.append("--cross-entropy-fusion-impl te needs Transformer Engine: "
                         "megatron-core's native fused cross entropy instead"
                         + ("" if request.bf16 else " (bf16 runs only): unfused here"))
            cross_entropy = "native" if request.bf16 else "unfused"
        elif request.cross_entropy_fusion_impl == "native" and not request.bf16:
            notes.append("--cross-entropy-loss-fusion (native) rounds the logit gradients to "
                         "bf16: used only with --bf16; unfused cross entropy here")
        else:
            cross_entropy = request.cross_entropy_fusion_impl

    bias_activation = request.bias_gelu_fusion if arch == "gpt_neox" \
        else request.bias_swiglu_fusion

    # megatron-core's local linears need apex's kernel for it (the output layer is always a
    # local linear), so the fusion is on only where apex has it.
    gradient_accumulation = request.gradient_accumulation_fusion and \
        capabilities.apex_gradient_accumulation
    if request.gradient_accumulation_fusion and not capabilities.apex_gradient_accumulation:
        notes.append("gradient-accumulation fusion needs apex's fused_weight_gradient_mlp_cuda "
                     "(not installed): weight gradients are accumulated unfused")

    if request.use_cpu_initialization:
        notes.append("--use-cpu-initialization: parameters are allocated and drawn on the "
                     "host, then moved to the GPU")
    return ExecutionPath(
        device="cuda", transformer_engine=use_te, attention=attention,
        attention_backend=backend, rope_fusion=rope, cross_entropy=cross_entropy,
        bias_activation_fusion=bias_activation, bias_dropout_fusion=request.bias_dropout_fusion,
        gradient_accumulation_fusion=gradient_accumulation,
        device_initialization=not request.use_cpu_initialization, notes=tuple(notes))

