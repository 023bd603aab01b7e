"""Shared inputs and helpers for the splice tests (reference, Triton, CUDA extension)."""

import sys

import pytest
import torch

from megatron_ponder.ops import backend_unavailable_reason

# `megatron_ponder.ops.splice` is the function (the package re-exports it), so reach the module
# itself through sys.modules.
SPLICE_MODULE = sys.modules["megatron_ponder.ops.splice"]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KS = [1, 2, 3, 4]
VARIANTS = ["growth", "jacobi"]
# (tokens, batch, hidden): odd sizes so no row is a multiple of any vector width, one wide row
# (several CUDA column blocks, odd byte count) and one aligned row (16-byte vector path).
SHAPES = [(3, 2, 37), (2, 3, 1031), (2, 2, 1024)]

# Each fused backend on each device it runs on. The CPU row is the Triton interpreter, the CPU
# counterpart of the GPU rows: the same tests, the same assertions.
FUSED = [
    pytest.param(("triton", "cpu"), id="triton-interpreter"),
    pytest.param(("triton", "cuda"), id="triton-gpu", marks=pytest.mark.gpu),
    pytest.param(("cuda", "cuda"), id="cuda-ext", marks=pytest.mark.gpu),
]


def slots(num_thoughts: int, variant: str):
    """(num_slots, prev_slots) of a pass: a growth pass has one slot fewer in prev."""
    num_slots = num_thoughts + 1
    return num_slots, num_slots if variant == "jacobi" else num_slots - 1


def random_inputs(shape, num_slots, prev_slots, dtype, device, seed):
    """Fresh random emb, prev and an output gradient for one case."""
    tokens, batch, hidden = shape
    gen = torch.Generator().manual_seed(seed)

    def rand(rows):
        return torch.randn(rows, batch, hidden, generator=gen).to(dtype=dtype, device=device)

    return rand(tokens), rand(tokens * prev_slots), rand(tokens * num_slots)


def poisoned(shape, dtype, device, pad=16):
    """A contiguous NaN tensor of ``shape`` inside a NaN buffer with ``pad`` guard elements on
    each side: an element the kernel fails to write stays NaN, a write out of bounds changes a
    guard. ``pad`` also sets the data pointer's alignment (pad * element size bytes)."""
    numel = 1
    for size in shape:
        numel *= size
    buf = torch.full((numel + 2 * pad,), float("nan"), dtype=dtype, device=device)
    return buf[pad: pad + numel].view(shape), buf, pad


def guards_intact(buf, pad):
    return bool(torch.isnan(buf[:pad]).all()) and bool(torch.isnan(buf[buf.numel() - pad:]).all())


def fused_backend(param):
    """(name, device, backend module) or skip with the reason this machine cannot run it."""
    name, device = param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device; the triton-interpreter tests cover the same logic on CPU")
    reason = backend_unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    return name, torch.device(device), SPLICE_MODULE._backend_impl(name)[0]
