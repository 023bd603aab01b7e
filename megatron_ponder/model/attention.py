"""Core attention on torch scaled_dot_product_attention, plugged in through the layer spec.

megatron-core's local DotProductAttention allocates from a CUDA global buffer, so it cannot run
on CPU; this module runs on CPU and GPU alike (SDPA picks flash / memory-efficient kernels on
GPU). Inference (KV cache, padded batches) is the transformers-native model's, not this one's.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPACoreAttention(MegatronModule):
    """Causal (or explicitly masked) attention over [s, b, heads, head_dim] tensors."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise NotImplementedError("SDPACoreAttention does not support context parallelism")
        self.layer_number = layer_number
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("packed sequences / attention bias are not supported")
        seq_q, batch, num_heads, head_dim = query.shape
        groups = key.shape[2]
        # [s, b, n, d] -> [b, n, s, d]; query heads of one group share that group's key/value.
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        if groups != num_heads:
            k = k.repeat_interleave(num_heads // groups, dim=1)
            v = v.repeat_interleave(num_heads // groups, dim=1)
        # Megatron's boolean masks are True where attention is NOT allowed.
        if attention_mask is None:
            if seq_q != k.shape[2]:
                raise ValueError("an implicit causal mask needs equal query and key lengths")
            mask, causal = None, True
        else:
            mask, causal = ~attention_mask, False
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout_p if self.training else 0.0, scale=self.softmax_scale,
        )
        return out.permute(2, 0, 1, 3).reshape(seq_q, batch, num_heads * head_dim)
