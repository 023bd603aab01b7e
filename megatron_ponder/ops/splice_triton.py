"""Triton backend of the splice (forward and backward kernels plus their launchers).

Both kernels are pure copies, so they are exact in every dtype and move each byte once. Every
tensor is seen as rows of ``R = b * h`` contiguous elements (one row per slot): the launchers
require that each row is dense (``stride(2) == 1`` and ``stride(1) == h``), but rows may sit at any
distance (``row_stride``), so slices along the sequence dimension need no copy.

Grid: axis 0 walks destination rows (one slot of one token), axis 1 walks ``BLOCK``-element chunks
of a row. The source of a destination row is a per-program scalar decision (``if``), so there is
no per-element branching and no integer division per element.

CPU tensors run under the Triton interpreter (tests only; about 1000x slower than torch).
``TRITON_INTERPRET=1`` takes effect only when ``@triton.jit`` runs, i.e. at import, so a process
that imported this module (or triton) before setting it would otherwise fail with "0 active
drivers". Rather than depend on import order, CPU tensors get the same Python function wrapped in
an ``InterpretedFunction`` on demand; with ``TRITON_INTERPRET=1`` set before import the kernels
are interpreted already and are used as is. The on-demand path patches only triton.language
*builtins*, so the kernels must not call ``@jit`` library helpers such as ``tl.zeros`` or
``tl.cdiv`` (use ``tl.full``, plain arithmetic); the CPU tests fail loudly if one slips in.
Neither kernel does arithmetic on the data, so the interpreter's bf16 arithmetic bug cannot
affect them.
"""

import contextlib
import functools

import torch
import triton
import triton.language as tl

from megatron_ponder.ops.splice import rows_are_dense

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
    grad_out_ptr, grad_prev_ptr,
    row_len, num_slots, prev_slots,
    grad_out_row_stride,
    BLOCK: tl.constexpr,
):
    # Destination row = (token, j) of grad_prev; its source is grad_out slot j + 1, or zeros for
    # the slot a Jacobi/final pass drops (j == num_slots - 1, only when prev_slots == num_slots).
    # grad_emb is not written here: it is a view of grad_out's slot 0 (see splice.py).
    row = tl.program_id(0).to(tl.int64)
    token = row // prev_slots
    j = row - token * prev_slots
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < row_len
    if j + 1 < num_slots:
        src_row = token * num_slots + j + 1
        vals = tl.load(grad_out_ptr + src_row * grad_out_row_stride + cols, mask=mask)
    else:
        vals = tl.full([BLOCK], 0, grad_out_ptr.dtype.element_ty)
    tl.store(grad_prev_ptr + row * row_len + cols, vals, mask=mask)


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


def _on(device: torch.device):
    """Triton launches on the current CUDA device; make that the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch_params(row_len: int, element_size: int, block):
    if block is None:
        block = min(_MAX_BLOCK, max(_MIN_BLOCK, triton.next_power_of_2(row_len)))
    elif block < 16 or block & (block - 1):
        raise ValueError(f"splice (triton): block must be a power of two >= 16, got {block}")
    # 16 bytes per thread per access and about four accesses in flight per thread.
    num_warps = max(1, min(8, block * element_size // (32 * 16 * 4)))
    return block, num_warps


def _check_layout(inputs, outputs) -> None:
    """Shapes are validated by splice._check; here only what would make a kernel address memory
    wrongly: an input whose [b, h] rows are not dense, or an output that is not contiguous."""
    for x in inputs:
        if not rows_are_dense(x):
            raise ValueError(f"splice (triton): input rows must be dense, strides {x.stride()}")
    for x in outputs:
        if not x.is_contiguous():
            raise ValueError("splice (triton): outputs must be contiguous")


def forward_into(emb: torch.Tensor, prev: torch.Tensor, out: torch.Tensor, num_slots: int,
                 prev_slots: int, *, block=None) -> None:
    """Write the splice of ``emb`` and ``prev`` into ``out`` (shapes validated by the caller)."""
    _check_layout((emb, prev), (out,))
    num_tokens, batch, hidden = emb.shape
    row_len = batch * hidden
    if num_tokens == 0 or row_len == 0:
        return
    block, num_warps = _launch_params(row_len, out.element_size(), block)
    grid = (num_tokens * num_slots, triton.cdiv(row_len, block))
    with _on(out.device):
        _for_device(_splice_fwd_kernel, out.device)[grid](
            emb, prev, out, row_len, num_slots, prev_slots, emb.stride(0), prev.stride(0),
            BLOCK=block, num_warps=num_warps,
        )


def backward_into(grad_out: torch.Tensor, grad_prev: torch.Tensor, num_slots: int,
                  prev_slots: int, *, block=None) -> None:
    """Write the shifted gradient (zeros for a dropped slot) into ``grad_prev``."""
    _check_layout((grad_out,), (grad_prev,))
    _, batch, hidden = grad_prev.shape
    row_len = batch * hidden
    if grad_prev.numel() == 0:
        return
    block, num_warps = _launch_params(row_len, grad_out.element_size(), block)
    grid = (grad_prev.shape[0], triton.cdiv(row_len, block))
    with _on(grad_out.device):
        _for_device(_splice_bwd_kernel, grad_out.device)[grid](
            grad_out, grad_prev, row_len, num_slots, prev_slots, grad_out.stride(0),
            BLOCK=block, num_warps=num_warps,
        )
