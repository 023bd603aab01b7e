"""Build a PonderGPTModel for the current process's pipeline stage."""

from typing import Optional

from megatron.core import parallel_state

from megatron_ponder.config import ModelConfig, ParallelConfig, PonderConfig, \
    build_transformer_config
from megatron_ponder.model.gpt_model import PonderGPTModel


def build_model(model_config: ModelConfig, ponder_config: PonderConfig,
                parallel_config: Optional[ParallelConfig] = None,
                use_te: Optional[bool] = None, seed: Optional[int] = None,
                **transformer_overrides) -> PonderGPTModel:
    """Parallel state must be initialised (see ``megatron_ponder.mcore.init``). The initial
    weights depend on ``seed`` only (default: the seed torch was last seeded with)."""
    config = build_transformer_config(model_config, ponder_config, parallel_config,
                                      **transformer_overrides)
    return PonderGPTModel(
        config, model_config, ponder_config,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        use_te=use_te,
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        seed=seed,
    )
