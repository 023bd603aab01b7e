"""Prompts as a batch for the transformers-native model."""

from typing import Sequence, Tuple

import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int,
             device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, T], attention mask [B, T]) padded on the left, the layout
    ``generate`` continues from."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)
