"""A Hugging Face style front end: ``model(input_ids, labels=None)`` -> logits and loss."""

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.model.gpt_model import PonderGPTModel


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    """float32 [B, L, V]: next-token logits of every position (from slot K)."""
    loss: Optional[torch.Tensor] = None
    """Mean cross-entropy of logits[:, :-1] against labels[:, 1:] (None without labels)."""


class PonderForCausalLM(torch.nn.Module):
    """Wraps one full PonderGPTModel (pipeline size 1) for scoring and generation."""

    def __init__(self, model: PonderGPTModel, hf_config: Optional[Dict[str, Any]] = None):
        super().__init__()
        if parallel_state.get_pipeline_model_parallel_world_size() != 1:
            raise ValueError("PonderForCausalLM needs the whole model on one pipeline stage")
        self.model = model
        self.hf_config = dict(hf_config or {})

    @property
    def model_config(self) -> ModelConfig:
        return self.model.model_config

    @property
    def ponder_config(self) -> PonderConfig:
        return self.model.ponder_config

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                jacobi_iterations: Optional[int] = None) -> CausalLMOutput:
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be a LongTensor [batch, length], got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)}")
        logits = self.model(input_ids, jacobi_iterations=jacobi_iterations)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
        logits = logits.float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1))
        return CausalLMOutput(logits=logits, loss=loss)
