"""GPT-NeoX's parallel-residual transformer layer: x + attn(ln1(x)) + mlp(ln2(x)).

megatron-core's TransformerLayer is sequential (the MLP sees the attention output). Pythia and
the PonderLM-2 GPT-NeoX models add both branches to the same residual. We reuse every submodule
of TransformerLayer (built from the same ModuleSpec fields) and only change how they are wired.
"""

import torch.nn.functional as F
from megatron.core.transformer.transformer_layer import TransformerLayer


class ParallelResidualTransformerLayer(TransformerLayer):
    """Same parameters and names as TransformerLayer; parallel residual wiring."""

    def forward(self, hidden_states, attention_mask=None, rotary_pos_emb=None,
                inference_context=None, packed_seq_params=None, context=None, **_unused):
        attn_out, attn_bias = self.self_attention(
            self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            rotary_pos_emb=rotary_pos_emb,
            inference_context=inference_context,
            packed_seq_params=packed_seq_params,
        )
        mlp_out, mlp_bias = self.mlp(self.pre_mlp_layernorm(hidden_states))
        # Linear layers return their bias separately (skip_bias_add) so it can be fused here.
        if attn_bias is not None:
            attn_out = attn_out + attn_bias
        if mlp_bias is not None:
            mlp_out = mlp_out + mlp_bias
        p, training = self.hidden_dropout, self.training
        output = hidden_states + F.dropout(attn_out, p, training) + F.dropout(mlp_out, p, training)
        return output, context
