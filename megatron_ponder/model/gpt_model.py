"""PonderGPTModel: one pipeline stage of a PonderLM-2 decoder on megatron-core modules.

It owns the pieces (embedding, decoder block with final norm, output layer) and exposes the
three operations the multi-pass forward needs: ``embed``, ``stack`` and ``output``. The pass
loop itself lives in ``ponder.py``; this file only wires megatron-core together.
"""

import contextlib
import math
import os
from typing import Optional

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.models.common.embeddings.language_model_embedding import (
    LanguageModelEmbedding,
)
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.model.execution import CPU_PATH, ExecutionPath
from megatron_ponder.model.init import seed_only_initialization
from megatron_ponder.model.layer_specs import block_submodules
from megatron_ponder.model.ponder import ponder_forward
from megatron_ponder.model.rotary import RotaryAngles


class PonderGPTModel(MegatronModule):
    """Decoder-only LM (Llama or GPT-NeoX) with the PonderLM-2 multi-pass forward.

    ``pre_process`` / ``post_process`` mark the first / last pipeline stage (embedding / final
    norm and output layer), as in megatron-core's GPTModel. Unless
    ``config.perform_initialization`` is off (weights about to be loaded), the weights are drawn
    from ``seed`` alone (default: the seed torch was last seeded with), the same in every
    parallel layout (``model/init.py``).
    """

    def __init__(self, config: TransformerConfig, model_config: ModelConfig,
                 ponder_config: PonderConfig, pre_process: bool = True,
                 post_process: bool = True, path: ExecutionPath = CPU_PATH,
                 pp_rank: Optional[int] = None, seed: Optional[int] = None):
        super().__init__(config=config)
        self.execution_path = path
        # Transformer Engine reads its attention switches from the environment.
        os.environ.update(path.attention_environment())
        self.model_config = model_config
        self.ponder_config = ponder_config
        self.pre_process = pre_process
        self.post_process = post_process
        self.model_type = ModelType.encoder_or_decoder  # read by megatron's schedules
        # Untied input/output embeddings (the paper's setting). megatron's gradient finalisation
        # reads this flag on the first and last pipeline stages to skip its tied-weight
        # all-reduce.
        self.share_embeddings_and_output_weights = False
        self.vocab_size = model_config.vocab_size
        # Unit-RMS token embeddings under the paper's init std sqrt(2/(5H)) (sqrt(2.5 H)).
        scale_factor = ponder_config.embedding_scale_factor
        self.embedding_scale = math.sqrt(scale_factor * config.hidden_size) if scale_factor \
            else 1.0

        # megatron-core's layers draw nothing here; every weight is drawn afterwards from the
        # seed, the same whatever the layout (model/init.py).
        with seed_only_initialization(self, seed):
            if pre_process:
                self.embedding = LanguageModelEmbedding(
                    config, vocab_size=self.vocab_size, max_sequence_length=0,
                    position_embedding_type="rope",
                )
                if ponder_config.method.uses_pause_embedding(ponder_config.thoughts):
                    self.pause_embedding = pause_embedding_parameter(config)
            self.rotary = RotaryAngles(config.kv_channels, model_config.rotary_percent,
                                       model_config.rotary_base)
            # The block always takes its input as an argument: the first stage feeds it from the
            # embeddings or the splice, later stages from the tensor the pipeline received
            # (megatron_ponder.parallel.pipeline), so the block itself never receives.
            self.decoder = TransformerBlock(
                config, block_submodules(config, model_config.parallel_residual, path, pp_rank),
                pre_process=True, post_process=post_process,
            )
            if post_process:
                self.output_layer = tensor_parallel.ColumnParallelLinear(
                    config.hidden_size, self.vocab_size, config=config,
                    init_method=config.init_method, bias=False, skip_bias_add=False,
                    gather_output=False,
                )

    # ----------------------------------------------------------------- the three operations
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> scaled word embeddings [L, B, H] (this rank's SP shard)."""
        embeddings = self.embedding(input_ids, position_ids=None)
        if self.embedding_scale != 1.0:
            embeddings = embeddings * self.embedding_scale
        return embeddings

    def pause_slots(self, embeddings: torch.Tensor, num_pause_slots: int) -> torch.Tensor:
        """The scaled pause embedding repeated for ``num_pause_slots`` slots of every token of
        ``embeddings`` ([L, B, H]): [L * num_pause_slots, B, H], token-major."""
        rows, batch, width = embeddings.shape
        pause = (self.pause_embedding * self.embedding_scale).to(embeddings.dtype)
        return pause.expand(rows * num_pause_slots, batch, width)

    def stack(self, hidden: torch.Tensor, num_slots: int,
              token_positions: Optional[torch.Tensor] = None,
              attention_mask: Optional[torch.Tensor] = None,
              inference_context=None, final_norm: bool = True) -> torch.Tensor:
        """This stage's decoder layers (+ final norm on the last stage) over one pass.

        ``hidden`` is [rows, B, H] with ``num_slots`` slots per token; every slot of a token
        gets that token's position (``token_positions`` [L] or [B, L], default 0..L-1).
        ``final_norm=False`` skips the final norm (the Loop baseline between loops).
        """
        total_rows = hidden.shape[0]
        if self.config.sequence_parallel:
            total_rows *= parallel_state.get_tensor_model_parallel_world_size()
        if token_positions is None:
            token_positions = torch.arange(total_rows // num_slots, device=hidden.device)
        slot_positions = token_positions.repeat_interleave(num_slots, dim=-1)
        with _final_norm_skipped(self.decoder, skip=not final_norm):
            return self.decoder(
                hidden_states=hidden,
                attention_mask=attention_mask,
                rotary_pos_emb=self.rotary(slot_positions),
                inference_context=inference_context,
            )

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """[L, B, H] final-normed states -> vocab-parallel logits [L, B, V / TP]."""
        logits, _ = self.output_layer(hidden)
        return logits

    def token_losses(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the output layer on ``hidden`` (slot K of every token, [L, B, H],
        this rank's sequence-parallel shard) against ``labels`` [B, L]: losses [B, L]."""
        logits, targets = self.output(hidden), labels.transpose(0, 1).contiguous()
        impl = self.execution_path.cross_entropy
        if impl == "unfused":
            losses = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), targets)
        else:  # the fused kernels take the logits in their dtype and compute in float32
            losses = fused_cross_entropy(impl)(
                logits, targets, parallel_state.get_tensor_model_parallel_group())
        return losses.transpose(0, 1).contiguous()

    # ----------------------------------------------------------------- single-stage forward
    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                jacobi_iterations: Optional[int] = None,
                num_latent_thoughts: Optional[int] = None, **stack_kwargs) -> torch.Tensor:
        """All passes on one stage (PP=1). [B, L] ids -> per-token losses [B, L] when
        ``labels`` ([B, L], already shifted targets) is given, else logits [B, L, V / TP].
        ``num_latent_thoughts`` overrides K (0 during --ponder-warmup-iters)."""
        ponder = self.ponder_config
        if jacobi_iterations is None:
            jacobi_iterations = ponder.jacobi_iterations
        thoughts = ponder.thoughts if num_latent_thoughts is None else num_latent_thoughts
        plan = ponder.method.plan(
            thoughts, jacobi_iterations,
            grad_passes=ponder.ponder_grad_passes if self.training else None)
        final = ponder_forward(self, input_ids, plan, **stack_kwargs)
        if labels is None:
            return self.output(final).transpose(0, 1).contiguous()
        return self.token_losses(final, labels)

    def set_input_tensor(self, input_tensor) -> None:
        """megatron's schedules call this before every forward step. With one stage there is
        nothing to receive; under pipeline parallelism the per-pass chunks of
        ``megatron_ponder.parallel.pipeline`` receive instead, so this stays a no-op."""


def fused_cross_entropy(impl: str):
    """megatron-core's fused vocab-parallel cross entropy: ``native`` (its own kernels) or
    ``te`` (Transformer Engine's); called as ``f(logits [s, b, V/TP], targets [s, b], group)``."""
    if impl == "te":
        from megatron.core.extensions.transformer_engine import te_parallel_cross_entropy

        if te_parallel_cross_entropy is None:
            raise RuntimeError("--cross-entropy-fusion-impl te needs Transformer Engine's "
                               "parallel cross entropy (transformer_engine >= 1.9)")
        return te_parallel_cross_entropy
    from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy

    return fused_vocab_parallel_cross_entropy


def pause_embedding_parameter(config: TransformerConfig) -> torch.nn.Parameter:
    """The Pause baseline's learned pause embedding [H], replicated on every tensor-parallel
    rank (drawn N(0, init std) with the other weights, model/init.py). Marked
    ``sequence_parallel``: with sequence parallelism each rank feeds it into its own slots,
    and megatron's gradient finalisation then sums its gradient over the tensor-parallel group
    (as for norms). Marked ``decayed``: in the authors' baseline the pause slot is a token, a row
    of the embedding matrix, which their optimizer weight-decays like every matrix, whereas
    megatron-core exempts 1-D parameters (``training.trainer.weight_decay_overrides``)."""
    parameter = torch.nn.Parameter(torch.empty(config.hidden_size, dtype=config.params_dtype))
    parameter.sequence_parallel = config.sequence_parallel
    parameter.decayed = True
    return parameter


@contextlib.contextmanager
def _final_norm_skipped(block: TransformerBlock, skip: bool):
    """Run ``block`` without its final norm (megatron's TransformerBlock applies it whenever
    the attribute is set; the Loop baseline normalises only after the last loop)."""
    norm = block.final_layernorm
    if not skip or norm is None:
        yield
        return
    block.final_layernorm = None
    try:
        yield
    finally:
        block.final_layernorm = norm
