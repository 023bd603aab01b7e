"""Key/value hooks for ``SDPACoreAttention``: padding masks and the generation KV cache.

Every attention layer calls ``hook.update(layer_number, key, value)`` with the keys/values of the
slots it is computing (after rotary, [slots, batch, groups, head_dim]) and attends to the
keys/values and boolean mask it gets back (megatron convention: True = NOT allowed).

Padded batches. Rows are padded on the left (or anywhere); ``token_is_real`` [B, L] marks real
tokens. A query may attend to an earlier-or-equal slot whose token is real, and always to itself:
padded queries then see exactly one key instead of none, so SDPA gives them finite values instead
of NaN (a fully masked softmax row), and no real query ever sees a padded key.
"""

import contextlib
from typing import Dict, Optional, Tuple

import torch

from megatron_ponder.model.attention import SDPACoreAttention


def token_positions(token_is_real: torch.Tensor) -> torch.Tensor:
    """[B, L] bool -> [B, L] position ids: the first real token of a row is 0, padding gets 0."""
    return (token_is_real.long().cumsum(dim=1) - 1).clamp(min=0)


def blocked_keys(key_is_real: torch.Tensor, query_start: int,
                 num_queries: int) -> Optional[torch.Tensor]:
    """Mask [B, 1, num_queries, num_keys] for queries at flat indices query_start.. over keys
    0..num_keys-1: causal, padded keys hidden, each query always sees itself.

    Returns None when that is the plain causal mask (no padding, queries == keys), so SDPA can
    take its fused causal path.
    """
    num_keys = key_is_real.shape[1]
    if query_start == 0 and num_queries == num_keys and bool(key_is_real.all()):
        return None
    device = key_is_real.device
    query_index = torch.arange(query_start, query_start + num_queries, device=device)[:, None]
    key_index = torch.arange(num_keys, device=device)[None, :]
    allowed = (key_index <= query_index) & (key_is_real[:, None, :] | (key_index == query_index))
    return ~allowed[:, None]


class PaddedPassMask:
    """Hook for an uncached pass over a padded batch: stores nothing, only masks.

    The number of slots per token differs between passes (growth passes), so it is read off the
    key length; the mask is built once per pass and shared by all layers.
    """

    def __init__(self, token_is_real: torch.Tensor):
        self.token_is_real = token_is_real.bool()
        self._masks: Dict[int, Optional[torch.Tensor]] = {}

    def update(self, layer_number: int, key: torch.Tensor, value: torch.Tensor):
        num_rows = key.shape[0]
        if num_rows not in self._masks:
            num_tokens = self.token_is_real.shape[1]
            if num_rows % num_tokens:
                raise ValueError(f"{num_rows} attention rows are not whole slots of "
                                 f"{num_tokens} tokens")
            slot_is_real = self.token_is_real.repeat_interleave(num_rows // num_tokens, dim=1)
            self._masks[num_rows] = blocked_keys(slot_is_real, 0, num_rows)
        return key, value, self._masks[num_rows]


class KVCache:
    """Keys and values of every slot seen so far, per layer, preallocated for ``capacity`` slots.

    Before each stack call that should write to the cache, call ``extend(slot_is_real)`` with the
    validity of the slots that call computes ([B, new_slots]); every layer then stores its
    keys/values there and attends to the whole cache so far. Slots are flat indices in the order
    they were computed: for PonderLM-2 that is token-major, K+1 slots per token, exactly the
    layout of the full (K+1)L sequence.
    """

    def __init__(self, batch_size: int, capacity: int, device=None):
        self.batch_size = batch_size
        self.capacity = capacity
        self.length = 0
        self.slot_is_real = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self._keys: Dict[int, torch.Tensor] = {}
        self._values: Dict[int, torch.Tensor] = {}
        self._step: Optional[Tuple[int, int]] = None
        self._step_mask: Optional[torch.Tensor] = None

    def extend(self, slot_is_real: torch.Tensor) -> None:
        """Reserve the next ``slot_is_real.shape[1]`` slots for the coming stack call."""
        start, count = self.length, slot_is_real.shape[1]
        if slot_is_real.shape[0] != self.batch_size:
            raise ValueError(f"batch {slot_is_real.shape[0]} != cache batch {self.batch_size}")
        if start + count > self.capacity:
            raise ValueError(f"KV cache full: {start} + {count} slots > capacity {self.capacity}")
        self.slot_is_real[:, start:start + count] = slot_is_real
        self._step = (start, start + count)
        self._step_mask = blocked_keys(self.slot_is_real[:, :start + count], start, count)
        self.length = start + count

    def update(self, layer_number: int, key: torch.Tensor, value: torch.Tensor):
        if self._step is None:
            raise RuntimeError("KVCache.update without extend(): no slots were reserved")
        start, end = self._step
        if key.shape[0] != end - start:
            raise ValueError(f"layer {layer_number} wrote {key.shape[0]} slots, "
                             f"{end - start} were reserved")
        if layer_number not in self._keys:
            shape = (self.capacity,) + tuple(key.shape[1:])
            self._keys[layer_number] = key.new_empty(shape)
            self._values[layer_number] = value.new_empty(shape)
        keys, values = self._keys[layer_number], self._values[layer_number]
        keys[start:end] = key
        values[start:end] = value
        return keys[:end], values[:end], self._step_mask


def core_attention_modules(model):
    return [m for m in model.modules() if isinstance(m, SDPACoreAttention)]


@contextlib.contextmanager
def key_value_hook(model, hook):
    """Attach ``hook`` (or nothing, when None) to every attention layer of ``model``."""
    modules = core_attention_modules(model)
    if hook is not None and not modules:
        raise RuntimeError("the model has no SDPACoreAttention layer to attach a KV hook to")
    previous = [m.key_value_hook for m in modules]
    for module in modules:
        module.key_value_hook = hook
    try:
        yield hook
    finally:
        for module, old in zip(modules, previous):
            module.key_value_hook = old
