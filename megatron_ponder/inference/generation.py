"""Generation with a KV cache, for PonderLM-2 and vanilla models (docs/method.md, "Inference").

Prefill: the scoring forward on the (left-padded) prompts; its final pass writes all (K+1)L
slots to the cache. Decode: each new token t runs K+1 single-slot steps at position t: step 0
takes the scaled word embedding e_t, step s the final-normed output of step s-1 (the thought
z_t^s); the last step's output gives the next-token logits. Every step appends one slot to the
cache, so the cache has exactly the layout of the full (K+1)L sequence and decoding is exact:
with a converged prefill it reproduces the uncached forward of the whole sequence. A vanilla
model (K = 0) takes one step per token.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_ponder.inference.attention_hooks import KVCache, key_value_hook
from megatron_ponder.inference.passes import JacobiSchedule, PassReport, run_ponder_passes
from megatron_ponder.inference.sampling import SamplingConfig, choose_next_tokens
from megatron_ponder.methods import PassInput

StoppingCriteria = Callable[[torch.Tensor], torch.Tensor]
"""Called after every new token with the new ids so far [B, n]; returns [B] bool: rows to stop."""


@dataclass
class GenerationOutput:
    sequences: torch.Tensor
    """[B, L + n] LongTensor: the prompts (padding kept) followed by the n new ids. A row that
    stopped (stop token or stopping criteria) holds ``pad_token_id`` after its last token."""
    prefill: PassReport
    """Passes the prefill ran (see ``JacobiSchedule`` for adaptive Jacobi)."""
    finished: torch.Tensor
    """[B] bool: rows that emitted a stop token or met the stopping criteria (False: the row
    ran until ``max_new_tokens``)."""


def vocab_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Final-normed states [..., B, H] -> float32 logits over the full vocabulary."""
    logits = model.output(hidden)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    return logits.float()


def decode_token(model, token_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                 num_latent_thoughts: int) -> torch.Tensor:
    """Feed one token per row ([B] ids at [B] positions); returns next-token logits [B, V]."""
    hidden = model.embed(token_ids[:, None])                    # [1, B, H]: e_t
    step_positions = positions[:, None]
    one_real_slot = torch.ones(token_ids.shape[0], 1, dtype=torch.bool, device=token_ids.device)
    # Pause baseline: the slots after e_t hold the pause embedding, not the previous output.
    pause = None
    if num_latent_thoughts and model.ponder_config.method.decode_slot_input(
            num_latent_thoughts) is PassInput.PAUSE:
        pause = model.pause_slots(hidden, 1)
    with key_value_hook(model, cache):
        for step in range(num_latent_thoughts + 1):              # e_t, then z_t^1 .. z_t^K
            cache.extend(one_real_slot)
            inputs = pause if step and pause is not None else hidden
            hidden = model.stack(inputs, 1, token_positions=step_positions)
    return vocab_logits(model, hidden[0])


def _as_id_list(ids: Union[int, Sequence[int], None]):
    if ids is None:
        return []
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int,
             device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, T], attention mask [B, T]) padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def check_token_batch(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]
                      ) -> Optional[torch.Tensor]:
    """Checks ``input_ids`` [B, L] (a LongTensor) and ``attention_mask`` (1 = real token, same
    shape); returns the mask as bool on the ids' device, None without one."""
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a LongTensor [batch, length], got "
                         f"{input_ids.dtype} {tuple(input_ids.shape)}")
    if attention_mask is None:
        return None
    mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(mask.shape)} != input_ids "
                         f"{tuple(input_ids.shape)}")
    return mask


def check_left_padded(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]):
    """The mask as bool [B, L] (all True when None); every row must end with a real token."""
    mask = check_token_batch(input_ids, attention_mask)
    if input_ids.shape[1] == 0:
        raise ValueError("generation needs at least one prompt token per row")
    if mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if not bool(mask[:, -1].all()):
        raise ValueError("generation needs LEFT-padded prompts: every row's last token must be "
                         "real (attention_mask[:, -1] == 1)")
    return mask


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
             max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             eos_token_id: Union[int, Sequence[int], None] = None,
             pad_token_id: Optional[int] = None, jacobi: Optional[JacobiSchedule] = None,
             generator: Optional[torch.Generator] = None,
             stopping_criteria: Optional[StoppingCriteria] = None) -> GenerationOutput:
    """Continue each (left-padded) prompt of ``input_ids`` [B, L] by up to ``max_new_tokens``.

    ``model`` is a full ``PonderGPTModel`` (one pipeline stage). A row stops after emitting any
    of ``eos_token_id`` or when ``stopping_criteria`` says so; later positions get
    ``pad_token_id`` (default: the first eos id, else 0). Generation ends when every row stopped.
    ``jacobi`` defaults to the model's fixed J.
    """
    token_is_real = check_left_padded(input_ids, attention_mask)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    stop_ids = _as_id_list(eos_token_id)
    if pad_token_id is None:
        pad_token_id = stop_ids[0] if stop_ids else 0
    num_thoughts = model.ponder_config.thoughts
    model.ponder_config.method.decode_slot_input(num_thoughts)  # ValueError: cannot decode
    if jacobi is None:
        jacobi = JacobiSchedule(model.ponder_config.jacobi_iterations)
    batch, prompt_length = input_ids.shape
    device = input_ids.device

    # The last new token is never fed back, hence the -1.
    cache = KVCache(batch, (num_thoughts + 1) * (prompt_length + max(max_new_tokens - 1, 0)),
                    device=device)
    last_hidden, report = run_ponder_passes(model, input_ids, num_thoughts, jacobi,
                                            token_is_real=token_is_real, cache=cache)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens = []
    if max_new_tokens > 0:
        logits = vocab_logits(model, last_hidden[-1])
        positions = token_is_real.sum(dim=1)            # next position of each row
        stop_tensor = torch.tensor(stop_ids, dtype=torch.long, device=device)
        for step in range(max_new_tokens):
            chosen = choose_next_tokens(logits, sampling, generator)
            chosen = torch.where(finished, torch.full_like(chosen, pad_token_id), chosen)
            new_tokens.append(chosen)
            if stop_ids:
                finished |= torch.isin(chosen, stop_tensor)
            if stopping_criteria is not None:
                finished |= stopping_criteria(torch.stack(new_tokens, dim=1)).to(device)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            logits = decode_token(model, chosen, positions, cache, num_thoughts)
            positions = positions + 1
    generated = (torch.stack(new_tokens, dim=1) if new_tokens
                 else input_ids.new_empty((batch, 0)))
    return GenerationOutput(sequences=torch.cat([input_ids, generated], dim=1), prefill=report,
                            finished=finished)
