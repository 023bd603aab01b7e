"""The PonderLM-2 model on megatron-core: layer specs, the multi-pass forward, the module."""

from megatron_ponder.model.gpt_model import PonderGPTModel
from megatron_ponder.model.build import build_model
from megatron_ponder.model.ponder import PassPlan, draw_jacobi_iterations, ponder_forward

__all__ = ["PassPlan", "PonderGPTModel", "build_model", "draw_jacobi_iterations", "ponder_forward"]
