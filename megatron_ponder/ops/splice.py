"""The splice: rebuild a pass's input from token embeddings and the previous pass's output.

Layout is Megatron's [s, b, h] with slots token-major: slot ``j`` of token ``t`` sits at row
``t * num_slots + j``. For every token ``t``::

    out[t, 0] = emb[t]                      (pass-invariant scaled word embedding)
    out[t, j] = prev[t, j - 1]   j = 1..num_slots-1

``prev`` holds ``prev_slots`` slots per token (``num_slots - 1`` for a growth pass,
``num_slots`` for a Jacobi/final pass, whose last slot is then dropped).
"""

import torch


def _check(emb: torch.Tensor, prev: torch.Tensor, num_slots: int) -> int:
    if emb.dim() != 3 or prev.dim() != 3:
        raise ValueError(f"splice expects [s, b, h] tensors, got emb {tuple(emb.shape)}, "
                         f"prev {tuple(prev.shape)}")
    num_tokens = emb.shape[0]
    if prev.shape[1:] != emb.shape[1:] or prev.shape[0] % max(num_tokens, 1) != 0:
        raise ValueError(f"splice: prev {tuple(prev.shape)} is not a whole number of slots per "
                         f"token of emb {tuple(emb.shape)}")
    prev_slots = prev.shape[0] // num_tokens
    if num_slots < 1 or prev_slots < num_slots - 1:
        raise ValueError(f"splice: cannot build {num_slots} slots per token from {prev_slots}")
    if prev.dtype != emb.dtype:
        raise TypeError(f"splice: dtype mismatch emb {emb.dtype} vs prev {prev.dtype}")
    return prev_slots


def splice_reference(emb: torch.Tensor, prev: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Plain torch implementation (autograd handles the backward)."""
    prev_slots = _check(emb, prev, num_slots)
    num_tokens, batch, hidden = emb.shape
    thoughts = prev.view(num_tokens, prev_slots, batch, hidden)[:, : num_slots - 1]
    out = torch.cat([emb.unsqueeze(1), thoughts], dim=1)
    return out.reshape(num_tokens * num_slots, batch, hidden)


def splice(emb: torch.Tensor, prev: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Build the next pass's input. See the module docstring for the layout."""
    return splice_reference(emb, prev, num_slots)
