"""Build a PonderGPTModel for the current process's pipeline stage."""

from typing import Optional

from megatron.core import parallel_state

from megatron_ponder.config import ModelConfig, ParallelConfig, PonderConfig, \
    build_transformer_config
from megatron_ponder.model.execution import CPU_PATH, ExecutionPath
from megatron_ponder.model.gpt_model import PonderGPTModel


def build_model(model_config: ModelConfig, ponder_config: PonderConfig,
                parallel_config: Optional[ParallelConfig] = None,
                path: ExecutionPath = CPU_PATH, seed: Optional[int] = None,
                **transformer_overrides) -> PonderGPTModel:
    """Parallel state must be initialised (see ``megatron_ponder.mcore.init``). ``path``
    (``model/execution.py``) picks the layers and fusions (default: the CPU path's, which run
    anywhere). The initial weights depend on ``seed`` only (default: the seed torch was last
    seeded with), not on the path or the layout."""
    config = build_transformer_config(model_config, ponder_config, parallel_config,
                                      **{**path.transformer_config_overrides(),
                                         **transformer_overrides})
    return PonderGPTModel(
        config, model_config, ponder_config,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        path=path,
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        seed=seed,
    )
