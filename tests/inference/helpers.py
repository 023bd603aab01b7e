"""Tiny PonderLM-2 folders and prompts shared by the inference tests."""

import torch

from megatron_ponder.hf import from_pretrained
from megatron_ponder.inference.generation import left_pad
from tests.tiny_models import VOCAB, save_tiny_hf


def ponder_fields(k: int, j: int = 3):
    return dict(recurrent_model=True, num_latent_thoughts=k, num_jacobi_iterations=j,
                scale_embeds=True, interpolation=False)


def tiny_ponder(folder, arch: str, k: int, **overrides):
    """A random tiny HF folder of a PonderLM-2 model with K=k -> (folder, loaded model).
    k=0 gives a vanilla model."""
    save_tiny_hf(folder, arch, ponder_fields=ponder_fields(k) if k else None)
    return str(folder), from_pretrained(str(folder), engine="megatron", **overrides)


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def left_padded(prompts, pad_id: int = 0):
    """1-D prompt tensors -> (ids [B, T], attention_mask [B, T]) padded on the left."""
    return left_pad([p.tolist() for p in prompts], pad_id)
