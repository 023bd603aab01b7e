"""Normalisation layers built from a megatron TransformerConfig.

megatron-core's local norm (WrappedTorchNorm) refuses sequence parallelism, and its fused norms
need apex/TE. This small module works everywhere: it computes in float32 (as Hugging Face's
Llama RMSNorm and GPT-NeoX LayerNorm do) and marks its parameters ``sequence_parallel`` so that
megatron's gradient finalisation all-reduces their gradients over the tensor-parallel group when
each rank only saw its shard of the sequence.
"""

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class Norm(torch.nn.Module):
    """RMSNorm or LayerNorm (with bias), chosen by ``config.normalization``."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__()
        if config.normalization not in ("RMSNorm", "LayerNorm"):
            raise ValueError(f"unsupported normalization {config.normalization!r}")
        self.rms = config.normalization == "RMSNorm"
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = None
        if not self.rms:
            self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        for param in self.parameters():
            setattr(param, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        if self.rms:
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * y.to(x.dtype)
        y = F.layer_norm(x32, (x.shape[-1],), self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)
