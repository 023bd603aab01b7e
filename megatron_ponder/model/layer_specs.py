"""ModuleSpecs for the two architectures, on megatron-core's tensor-parallel layers.

Both use megatron's SelfAttention and MLP; what differs is expressed in the TransformerConfig
(norm type, gated MLP, biases) and in the layer class (GPT-NeoX's parallel residual). The
execution path (``model/execution.py``) picks the building blocks: megatron-core's local
linears, our float32 norms and SDPA core attention; or Transformer Engine's fused norm + linear
(QKV and FC1), linears, core attention and norm. The TE spec maps the fused norms' weights back
to the local names in checkpoints, so checkpoints and the HF mapping do not depend on the path.
"""

from typing import Optional

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
from megatron_ponder.model.execution import CANONICAL_PREFIXES, CPU_PATH, ExecutionPath
from megatron_ponder.model.norms import Norm
from megatron_ponder.model.parallel_residual import ParallelResidualTransformerLayer


def _te():
    """megatron-core's Transformer Engine wrappers (placeholders when TE is not installed:
    specs can be built and inspected anywhere, modules only with TE and CUDA)."""
    from megatron.core.extensions import transformer_engine

    return transformer_engine


def layer_spec(parallel_residual: bool, path: ExecutionPath = CPU_PATH) -> ModuleSpec:
    """Spec of one decoder layer (sequential or parallel residual) for ``path``."""
    if path.transformer_engine:
        te = _te()
        # The norms live inside linear_qkv / linear_fc1 (also for the parallel residual,
        # whose two branches each start with their own norm).
        qkv, fc1, column, row = (te.TELayerNormColumnParallelLinear,
                                 te.TELayerNormColumnParallelLinear,
                                 te.TEColumnParallelLinear, te.TERowParallelLinear)
        input_norm = pre_mlp_norm = IdentityOp
        keys_map = dict(CANONICAL_PREFIXES)
    else:
        qkv = fc1 = column = ColumnParallelLinear
        row = RowParallelLinear
        input_norm = pre_mlp_norm = Norm
        keys_map = {}
    core_attention = _te().TEDotProductAttention if path.attention == "te" else SDPACoreAttention
    attention = ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=qkv,
            core_attention=core_attention,
            linear_proj=row,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
    )
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=fc1, linear_fc2=row))
    return ModuleSpec(
        module=ParallelResidualTransformerLayer if parallel_residual else TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=input_norm,
            self_attention=attention,
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=pre_mlp_norm,
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map=keys_map,
        ),
    )


def block_submodules(config, parallel_residual: bool, path: ExecutionPath = CPU_PATH,
                     pp_rank: Optional[int] = None) -> TransformerBlockSubmodules:
    """This pipeline stage's decoder layers plus the final norm, for megatron's
    TransformerBlock."""
    num_layers = get_num_layers_to_build(config, vp_stage=None, pp_rank=pp_rank)
    return TransformerBlockSubmodules(
        layer_specs=[layer_spec(parallel_residual, path)] * num_layers,
        layer_norm=_te().TENorm if path.transformer_engine else Norm,
    )
