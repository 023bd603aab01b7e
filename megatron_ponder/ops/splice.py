"""The splice: rebuild a pass's input from token embeddings and the previous pass's output.

Layout is Megatron's [s, b, h] with slots token-major: slot ``j`` of token ``t`` sits at row
``t * num_slots + j``. For every token ``t``::

    out[t, 0] = emb[t]                      (pass-invariant scaled word embedding)
    out[t, j] = prev[t, j - 1]   j = 1..num_slots-1

``prev`` holds ``prev_slots`` slots per token (``num_slots - 1`` for a growth pass,
``num_slots`` for a Jacobi/final pass, whose last slot is then dropped). Backward:
``grad_emb[t] = grad_out[t, 0]``, ``grad_prev[t, j] = grad_out[t, j + 1]`` and zeros for the
dropped slot. The op is purely local in the sequence dimension, so under sequence/context
parallelism each rank applies it to its own contiguous token range unchanged.

Backends (one entry point, ``splice``): ``torch`` (reference, always available), ``triton``
(``splice_triton.py``; CUDA tensors, or CPU tensors through the Triton interpreter for tests) and
``cuda`` (the C++ extension built from ``csrc/``). ``auto`` picks cuda, then triton, then torch
for CUDA tensors and torch for CPU tensors (the interpreter is ~1000x slower than torch). Override
with ``backend=`` or the environment variable ``MEGATRON_PONDER_SPLICE_BACKEND``; an explicit
backend that cannot run raises instead of falling back. Both fused backends are copies, bit-exact
in every dtype, that read and write each byte once.

Bytes per call (``X = s * b * h * element size``, one slot plane; ``N = num_slots``,
``P = prev_slots``): forward reads ``X`` of ``emb`` and ``(N - 1) X`` of ``prev`` and writes
``N X`` (``2 N X``). Backward: ``grad_emb`` is returned as a strided view of ``grad_out``'s slot 0
(no bytes; the torch reference's autograd does the same), and the kernel reads ``(N - 1) X`` and
writes ``P X`` for ``grad_prev`` (``(N - 1 + P) X``). Materialising ``grad_emb`` would add a write
and a read of ``X`` per call for nothing: its only consumer, autograd summing ``emb``'s gradient
over the passes, reads slot 0 once either way. (The view keeps ``grad_out`` alive until that sum
is taken, at most for one pass's backward.)

Why the embedding gather and the sqrt(2.5 H) scale are NOT fused into the kernel. With
``S = K + J`` splices per micro-batch (every pass after the first):

* Forward: a fused gather reads ``X`` of table rows per splice instead of ``X`` of ``emb``: the
  same bytes (the token ids add ``8 s b``). Nothing else is saved, because the first pass's input
  *is* the scaled embedding: ``emb`` (gather, scale, TP reduction) is materialised once per
  micro-batch anyway, and the scale is free there.
* Backward: unfused, autograd adds each splice's slot-0 view into ``emb``'s gradient (read
  ``2X``, write ``X``) and the embedding backward (scale, scatter into the table gradient, TP
  collective) runs once, on the sum. Fused, every splice would scatter-add into the table's
  fp32 gradient (``2 * 4 / bytes * X = 4X`` for bf16, more than ``3X``), with atomics on repeated
  tokens (non-deterministic sums) and the scale's backward each time.
* Tensor parallel: the table is vocab-parallel, so each rank produces a partial embedding and an
  all-reduce (a reduce-scatter with sequence parallelism) completes it. Fused, that collective of
  ``X`` (and its backward) would run in every splice instead of once: ``S - 1`` extra per
  micro-batch each way.

Example: h=2048, s=4096 local tokens, b=4, bf16 gives ``X`` = 64 MiB; K=1, J=3 gives S=4
splices, 1 GiB of forward splice traffic per micro-batch either way, +256 MiB of backward traffic
and 3 + 3 extra 64 MiB TP collectives if fused. So the kernel takes the precomputed ``emb``.
"""

import functools
import os

import torch

from megatron_ponder.devices import default_device

BACKEND_ENV = "MEGATRON_PONDER_SPLICE_BACKEND"
BACKENDS = ("auto", "torch", "triton", "cuda")
# The fused kernels copy bytes, so any floating dtype works; these are the ones we test.
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check(emb: torch.Tensor, prev: torch.Tensor, num_slots: int) -> int:
    if emb.dim() != 3 or prev.dim() != 3:
        raise ValueError(f"splice expects [s, b, h] tensors, got emb {tuple(emb.shape)}, "
                         f"prev {tuple(prev.shape)}")
    if isinstance(num_slots, bool) or not isinstance(num_slots, int):
        raise TypeError(f"splice: num_slots must be an int, got {num_slots!r}")
    num_tokens = emb.shape[0]
    if prev.shape[1:] != emb.shape[1:] or prev.shape[0] % max(num_tokens, 1) != 0:
        raise ValueError(f"splice: prev {tuple(prev.shape)} is not a whole number of slots per "
                         f"token of emb {tuple(emb.shape)}")
    if num_tokens == 0:
        # No token to count slots with: an empty shard (for example under sequence parallelism).
        if prev.shape[0] != 0:
            raise ValueError(f"splice: prev {tuple(prev.shape)} has rows but emb has no tokens")
        prev_slots = max(num_slots - 1, 0)
    else:
        prev_slots = prev.shape[0] // num_tokens
    if num_slots < 1 or prev_slots < num_slots - 1:
        raise ValueError(f"splice: cannot build {num_slots} slots per token from {prev_slots}")
    if prev.dtype != emb.dtype:
        raise TypeError(f"splice: dtype mismatch emb {emb.dtype} vs prev {prev.dtype}")
    if prev.device != emb.device:
        raise ValueError(f"splice: device mismatch emb {emb.device} vs prev {prev.device}")
    return prev_slots


def splice_reference(emb: torch.Tensor, prev: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Plain torch implementation (autograd handles the backward)."""
    prev_slots = _check(emb, prev, num_slots)
    num_tokens, batch, hidden = emb.shape
    # reshape, not view: a non-contiguous prev is valid input (copied here if it must be).
    thoughts = prev.reshape(num_tokens, prev_slots, batch, hidden)[:, : num_slots - 1]
    out = torch.cat([emb.unsqueeze(1), thoughts], dim=1)
    return out.reshape(num_tokens * num_slots, batch, hidden)


# --------------------------------------------------------------------------- fused backends


def rows_are_dense(x: torch.Tensor) -> bool:
    """Whether each [b, h] row of an [s, b, h] tensor is one dense run of memory."""
    _, batch, hidden = x.shape
    return (hidden <= 1 or x.stride(2) == 1) and (batch <= 1 or x.stride(1) == hidden)


def _dense_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if its rows are dense, else a contiguous copy.

    The kernels take any stride between rows (so slices along s cost nothing) but copy a row as
    one flat vector; a transposed or strided [b, h] block is rare (autograd's expanded
    gradients, e.g. of ``out.sum()``) and is handled by this one extra copy.
    """
    return x if rows_are_dense(x) else x.contiguous()


class _FusedSplice(torch.autograd.Function):
    """Autograd for a fused backend; ``impl`` (a backend module) supplies the two kernels.

    One Function serves both fused backends because they share the exact contract
    (``forward_into`` / ``backward_into`` on preallocated outputs); only the kernels differ.
    Nothing is saved for backward: the op is a copy, its gradient needs only the shapes.
    The kernels need dense [b, h] rows; other layouts are copied first (``_dense_rows``).
    """

    @staticmethod
    def forward(ctx, emb, prev, num_slots, prev_slots, impl):
        num_tokens, batch, hidden = emb.shape
        out = emb.new_empty((num_tokens * num_slots, batch, hidden))
        impl.forward_into(_dense_rows(emb), _dense_rows(prev), out, num_slots, prev_slots)
        ctx.num_slots, ctx.prev_slots, ctx.impl = num_slots, prev_slots, impl
        ctx.emb_shape = emb.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        num_tokens, batch, hidden = ctx.emb_shape
        grad_emb = grad_prev = None
        if ctx.needs_input_grad[0]:
            # A strided view, no copy: the consumer (autograd summing emb's gradient over the
            # passes) reads slot 0 exactly once either way; see "Bytes per call" above.
            grad_emb = grad_out.unflatten(0, (num_tokens, ctx.num_slots))[:, 0]
        if ctx.needs_input_grad[1]:
            grad_prev = grad_out.new_empty((num_tokens * ctx.prev_slots, batch, hidden))
            ctx.impl.backward_into(_dense_rows(grad_out), grad_prev, ctx.num_slots,
                                   ctx.prev_slots)
        return grad_emb, grad_prev, None, None, None


@functools.lru_cache(maxsize=None)
def _triton_module():
    """(splice_triton module, None) or (None, reason). Imported lazily: triton is optional."""
    try:
        from megatron_ponder.ops import splice_triton
    except Exception as exc:  # ImportError, or a broken triton install failing at import
        return None, f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
    return splice_triton, None


def _backend_impl(name: str):
    """(module, None) or (None, reason) for a fused backend name."""
    if name == "triton":
        return _triton_module()
    from megatron_ponder.ops import splice_cuda

    reason = splice_cuda.unavailable_reason()
    return (None, reason) if reason else (splice_cuda, None)


def backend_unavailable_reason(name: str):
    """None if backend ``name`` can be loaded here, else a sentence saying why not."""
    if name not in BACKENDS:
        raise ValueError(f"splice: unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name in ("auto", "torch"):
        return None
    return _backend_impl(name)[1]


def available_backends(device=None) -> list:
    """Backends that can run on ``device`` (default: CUDA if present, else CPU), best first."""
    device = torch.device(device) if device is not None else default_device()
    names = []
    if device.type == "cuda" and _backend_impl("cuda")[0] is not None:
        names.append("cuda")
    if device.type in ("cuda", "cpu") and _backend_impl("triton")[0] is not None:
        names.append("triton")  # on CPU: the interpreter, for tests only
    names.append("torch")
    return names


def resolve_backend(emb: torch.Tensor, backend=None) -> str:
    """The backend ``splice`` uses for ``emb`` given ``backend`` or the environment override."""
    name = backend if backend is not None else os.environ.get(BACKEND_ENV) or "auto"
    if not isinstance(name, str):
        raise TypeError(f"splice: backend must be a string, got {name!r}")
    name = name.strip().lower()
    if name not in BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ValueError(f"splice: unknown backend {name!r} (from {source}); choose from "
                         f"{', '.join(BACKENDS)}")
    if name == "auto":
        if emb.device.type != "cuda" or emb.dtype not in FUSED_DTYPES:
            return "torch"
        for candidate in ("cuda", "triton"):
            if _backend_impl(candidate)[0] is not None:
                return candidate
        return "torch"
    if name == "torch":
        return name
    if emb.dtype not in FUSED_DTYPES:
        raise TypeError(f"splice ({name}): dtype {emb.dtype} not supported; use one of "
                        f"{', '.join(str(d) for d in FUSED_DTYPES)} or backend='torch'")
    if name == "cuda" and emb.device.type != "cuda":
        raise ValueError(f"splice (cuda): needs CUDA tensors, got {emb.device}")
    if name == "triton" and emb.device.type not in ("cuda", "cpu"):
        raise ValueError(f"splice (triton): needs CUDA (or CPU, interpreted) tensors, got "
                         f"{emb.device}")
    impl, reason = _backend_impl(name)
    if impl is None:
        raise RuntimeError(f"splice: backend {name!r} requested but unavailable: {reason}")
    return name


def splice(emb: torch.Tensor, prev: torch.Tensor, num_slots: int, *,
           backend=None) -> torch.Tensor:
    """Build the next pass's input. See the module docstring for layout and backends.

    Args:
        emb: [s, b, h] scaled word embeddings of the s local tokens (pass-invariant).
        prev: [s * prev_slots, b, h] previous pass's final-normed output.
        num_slots: slots per token of the result (K + 1 in the final/Jacobi passes).
        backend: "auto", "torch", "triton" or "cuda"; None reads MEGATRON_PONDER_SPLICE_BACKEND
            (default "auto").
    Returns:
        [s * num_slots, b, h], contiguous.
    """
    prev_slots = _check(emb, prev, num_slots)
    name = resolve_backend(emb, backend)
    if name == "torch":
        return splice_reference(emb, prev, num_slots)
    impl, _ = _backend_impl(name)
    return _FusedSplice.apply(emb, prev, num_slots, prev_slots, impl)
