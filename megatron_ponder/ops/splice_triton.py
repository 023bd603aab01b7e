"""Triton backend of the splice (forward and backward kernels plus their launchers).

Both kernels are pure copies, so they are exact in every dtype and move each byte once. Every
tensor is seen as rows of ``R = b * h`` contiguous elements (one row per slot): the launchers
require that each row is dense (``stride(2) == 1`` and ``stride(1) == h``), but rows may sit at any
distance (``row_stride``), so slices along the sequence dimension need no copy.

Grid: axis 0 walks destination rows (one slot of one token), axis 1 walks ``BLOCK``-element chunks
of a row. The source of a destination row is a per-program scalar decision (``if``), so there is
no per-element branching and no integer division per element.

CPU tensors run under the Triton interpreter. ``TRITON_INTERPRET=1`` only takes effect when
``@triton.jit`` runs (at import), so rather than depend on import order we wrap the same Python
function in an ``InterpretedFunction`` on demand whenever the tensors are on the CPU; with
``TRITON_INTERPRET=1`` set before import the kernels are interpreted already and are used as is.
"""

import functools

import torch
import triton
import triton.language as tl

# Largest chunk of a row one program copies; 4096 bf16 elements = 8 KiB, enough bytes in flight
# per program for a bandwidth-bound copy without spilling registers (to be tuned on GPU).
_MAX_BLOCK = 4096
_MIN_BLOCK = 128


@triton.jit
def _splice_fwd_kernel(
    emb_ptr, prev_ptr, out_ptr,
    row_len, num_slots, prev_slots,
    emb_row_stride, prev_row_stride,
    BLOCK: tl.constexpr,
):
    # int64 before any multiplication: out can exceed 2**31 elements (s=8192, b=8, h=4096, K=3).
    row = tl.program_id(0).to(tl.int64)
    token = row // num_slots
    slot = row - token * num_slots
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < row_len
    if slot == 0:
        vals = tl.load(emb_ptr + token * emb_row_stride + cols, mask=mask)
    else:
        src_row = token * prev_slots + slot - 1
        vals = tl.load(prev_ptr + src_row * prev_row_stride + cols, mask=mask)
    tl.store(out_ptr + row * row_len + cols, vals, mask=mask)


@triton.jit
def _splice_bwd_kernel(
    grad_out_ptr, grad_emb_ptr, grad_prev_ptr,
    row_len, num_slots, prev_slots,
    grad_out_row_stride,
    BLOCK: tl.constexpr,
):
    # Rows are walked in the order of the virtual concatenation [grad_emb_t | grad_prev_t, 0..P-1]
    # of token t; virtual row k of token t is grad_out slot k, or zeros for k == num_slots (the
    # slot a Jacobi/final pass drops, which exists only when prev_slots == num_slots).
    row = tl.program_id(0).to(tl.int64)
    token = row // (prev_slots + 1)
    k = row - token * (prev_slots + 1)
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < row_len
    if k < num_slots:
        src_row = token * num_slots + k
        vals = tl.load(grad_out_ptr + src_row * grad_out_row_stride + cols, mask=mask)
    else:
        vals = tl.zeros([BLOCK], dtype=grad_out_ptr.dtype.element_ty)
    if k == 0:
        tl.store(grad_emb_ptr + token * row_len + cols, vals, mask=mask)
    else:
        dst_row = token * prev_slots + k - 1
        tl.store(grad_prev_ptr + dst_row * row_len + cols, vals, mask=mask)


@functools.lru_cache(maxsize=None)
def _interpreted(kernel):
    """The same kernel run by Triton's CPU interpreter (cached: rewriting the AST is slow)."""
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):  # TRITON_INTERPRET=1 was set before import
        return kernel
    return InterpretedFunction(kernel.fn)


def _for_device(kernel, device: torch.device):
    if device.type == "cuda":
        return kernel
    if device.type == "cpu":
        return _interpreted(kernel)
    raise ValueError(f"splice (triton): unsupported device {device}")


def _launch_params(row_len: int, element_size: int, block):
    if block is None:
        block = min(_MAX_BLOCK, max(_MIN_BLOCK, triton.next_power_of_2(row_len)))
    elif block < 16 or block & (block - 1):
        raise ValueError(f"splice (triton): block must be a power of two >= 16, got {block}")
    # 16 bytes per thread per access and about four accesses in flight per thread.
    num_warps = max(1, min(8, block * element_size // (32 * 16 * 4)))
    return block, num_warps


def forward_into(emb: torch.Tensor, prev: torch.Tensor, out: torch.Tensor, num_slots: int,
                 prev_slots: int, *, block=None) -> None:
    """Write the splice of ``emb`` and ``prev`` into ``out`` (validated by the caller)."""
    num_tokens, batch, hidden = emb.shape
    row_len = batch * hidden
    if num_tokens == 0 or row_len == 0:
        return
    block, num_warps = _launch_params(row_len, out.element_size(), block)
    grid = (num_tokens * num_slots, triton.cdiv(row_len, block))
    _for_device(_splice_fwd_kernel, out.device)[grid](
        emb, prev, out, row_len, num_slots, prev_slots, emb.stride(0), prev.stride(0),
        BLOCK=block, num_warps=num_warps,
    )


def backward_into(grad_out: torch.Tensor, grad_emb: torch.Tensor, grad_prev: torch.Tensor,
                  num_slots: int, prev_slots: int, *, block=None) -> None:
    """Write the slot-0 gradient into ``grad_emb`` and the shifted one into ``grad_prev``."""
    num_tokens, batch, hidden = grad_emb.shape
    row_len = batch * hidden
    if num_tokens == 0 or row_len == 0:
        return
    block, num_warps = _launch_params(row_len, grad_out.element_size(), block)
    grid = (num_tokens * (prev_slots + 1), triton.cdiv(row_len, block))
    _for_device(_splice_bwd_kernel, grad_out.device)[grid](
        grad_out, grad_emb, grad_prev, row_len, num_slots, prev_slots, grad_out.stride(0),
        BLOCK=block, num_warps=num_warps,
    )
