"""A Hugging Face style front end: ``model(input_ids, attention_mask, labels)`` -> logits and
loss, and ``model.generate(...)`` with a KV cache."""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from megatron.core import parallel_state

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.inference.generation import (
    GenerationOutput,
    StoppingCriteria,
    check_token_batch,
    generate,
    vocab_logits,
)
from megatron_ponder.inference.passes import JacobiSchedule, PassReport, run_ponder_passes
from megatron_ponder.inference.sampling import SamplingConfig
from megatron_ponder.model.gpt_model import PonderGPTModel

IGNORE_INDEX = -100


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    """float32 [B, L, V]: next-token logits of every position (from slot K). Padded positions
    hold finite values that mean nothing."""
    loss: Optional[torch.Tensor] = None
    """Mean cross-entropy of logits[:, :-1] against labels[:, 1:] over targets that are not -100
    and, with an attention_mask, real tokens predicted from real tokens (None without labels)."""
    passes: Optional[PassReport] = None
    """The passes the forward ran (Jacobi iterations used; adaptive convergence)."""


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

    def jacobi_schedule(self, jacobi_iterations: Union[int, str, None] = None,
                        jacobi_tolerance: Optional[float] = None,
                        max_jacobi_iterations: Optional[int] = None) -> JacobiSchedule:
        """None: the config's J; an int: fixed J; ``"adaptive"``: iterate until the thoughts
        change by at most ``jacobi_tolerance`` (default by dtype), capped at
        ``max_jacobi_iterations`` (default 32) Jacobi passes."""
        dtype = next(self.model.parameters()).dtype
        return JacobiSchedule.resolve(jacobi_iterations, self.ponder_config.jacobi_iterations,
                                      dtype, jacobi_tolerance, max_jacobi_iterations)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                jacobi_iterations: Union[int, str, None] = None,
                jacobi_tolerance: Optional[float] = None,
                max_jacobi_iterations: Optional[int] = None,
                logits_to_keep: int = 0) -> CausalLMOutput:
        """Score ``input_ids`` [B, L]. ``attention_mask`` [B, L] (1 = real token, 0 = padding,
        left or right): each row gets positions 0.. from its first real token and never
        attends to padding, so a row's logits do not depend on how the batch was padded.
        ``logits_to_keep`` > 0 returns only the last that many positions' logits (saves the
        [B, L, V] output when scoring continuations; not with ``labels``)."""
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep cannot be combined with labels")
        token_is_real = check_token_batch(input_ids, attention_mask)
        schedule = self.jacobi_schedule(jacobi_iterations, jacobi_tolerance,
                                        max_jacobi_iterations)
        hidden, report = run_ponder_passes(self.model, input_ids, self.ponder_config.thoughts,
                                           schedule, token_is_real=token_is_real)
        if logits_to_keep:
            hidden = hidden[-logits_to_keep:]
        logits = vocab_logits(self.model, hidden).transpose(0, 1).contiguous()
        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            if token_is_real is not None:
                # A target counts when it and the position predicting it are both real (with
                # left padding the last pad would otherwise "predict" the first real token).
                scored = token_is_real[:, :-1] & token_is_real[:, 1:]
                targets = targets.masked_fill(~scored, IGNORE_INDEX)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return CausalLMOutput(logits=logits, loss=loss, passes=report)

    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0,
                 eos_token_id: Union[int, Sequence[int], None] = None,
                 pad_token_id: Optional[int] = None,
                 generator: Optional[torch.Generator] = None,
                 jacobi_iterations: Union[int, str, None] = None,
                 jacobi_tolerance: Optional[float] = None,
                 max_jacobi_iterations: Optional[int] = None,
                 stopping_criteria: Optional[StoppingCriteria] = None,
                 return_dict_in_generate: bool = False
                 ) -> Union[torch.Tensor, GenerationOutput]:
        """Hugging Face style generation with a KV cache.

        ``input_ids`` [B, L] with ``attention_mask`` for LEFT-padded prompts of different
        lengths. Returns a LongTensor [B, L + n]: the prompts followed by the new ids; rows
        that emitted an ``eos_token_id`` (int or list) are filled with ``pad_token_id``
        (default: the first eos id) afterwards, and generation stops early once all rows did.
        ``return_dict_in_generate=True`` returns a ``GenerationOutput`` that also reports the
        prefill's passes (useful with ``jacobi_iterations="adaptive"``).
        """
        output = generate(
            self.model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
            sampling=SamplingConfig(do_sample=do_sample, temperature=temperature, top_k=top_k,
                                    top_p=top_p),
            eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            jacobi=self.jacobi_schedule(jacobi_iterations, jacobi_tolerance,
                                        max_jacobi_iterations),
            generator=generator, stopping_criteria=stopping_criteria)
        return output if return_dict_in_generate else output.sequences
