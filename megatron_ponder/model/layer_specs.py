"""ModuleSpecs for the two architectures, on megatron-core's tensor-parallel layers.

Both use megatron's SelfAttention and MLP; what differs is expressed in the TransformerConfig
(norm type, gated MLP, biases) and in the layer class (GPT-NeoX's parallel residual). The core
attention is ours (SDPA). With Transformer Engine importable and CUDA present, the linear
layers come from TE instead; parameter names stay the same, so checkpoints and the HF mapping
do not depend on the backend.
"""

import importlib.util
from typing import Optional

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_ponder.model.attention import SDPACoreAttention
from megatron_ponder.model.norms import Norm
from megatron_ponder.model.parallel_residual import ParallelResidualTransformerLayer


def transformer_engine_available() -> bool:
    """TE linears are used only when TE imports and there is a GPU to run them."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def _linear_classes(use_te: bool):
    if use_te:
        from megatron.core.extensions.transformer_engine import (
            TEColumnParallelLinear,
            TERowParallelLinear,
        )
        return TEColumnParallelLinear, TERowParallelLinear
    return ColumnParallelLinear, RowParallelLinear


def layer_spec(parallel_residual: bool, use_te: Optional[bool] = None) -> ModuleSpec:
    """Spec of one decoder layer (sequential or parallel residual)."""
    use_te = transformer_engine_available() if use_te is None else use_te
    column, row = _linear_classes(use_te)
    attention = ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=column,
            core_attention=SDPACoreAttention,
            linear_proj=row,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
    )
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=column, linear_fc2=row))
    return ModuleSpec(
        module=ParallelResidualTransformerLayer if parallel_residual else TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=Norm,
            self_attention=attention,
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=Norm,
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
        ),
    )


def block_submodules(config, parallel_residual: bool, use_te: Optional[bool] = None,
                     pp_rank: Optional[int] = None) -> TransformerBlockSubmodules:
    """This pipeline stage's decoder layers plus the final norm (our Norm), for
    megatron's TransformerBlock."""
    num_layers = get_num_layers_to_build(config, vp_stage=None, pp_rank=pp_rank)
    return TransformerBlockSubmodules(
        layer_specs=[layer_spec(parallel_residual, use_te)] * num_layers,
        layer_norm=Norm,
    )
