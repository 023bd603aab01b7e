"""Fused splice backends (Triton, CUDA extension) against the torch reference.

Every case is run by every fused backend: the Triton kernels under the Triton interpreter on CPU,
and on a GPU (when present) the Triton kernels compiled and the CUDA extension. Copies must be
bit-exact, so results are compared with torch.equal. Outputs are poisoned with NaN inside NaN
guard bands before each launch: an element the kernel does not write, or a write out of bounds,
fails the test.

The interpreter is selected per call for CPU tensors (see splice_triton.py), so these tests do
not depend on TRITON_INTERPRET or on which module imported triton first; test_env_interpreter_route
checks the documented TRITON_INTERPRET=1 route in a fresh process.
"""

import os
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch

from megatron_ponder.ops import splice, splice_reference
from tests.ops.splice_cases import (DTYPES, FUSED, KS, SHAPES, VARIANTS, fused_backend,
                                    guards_intact, poisoned, random_inputs, slots)


@pytest.fixture(params=FUSED)
def fused(request):
    return fused_backend(request.param)


def reference_grads(emb, prev, num_slots, grad_out):
    emb, prev = emb.detach().requires_grad_(), prev.detach().requires_grad_()
    return torch.autograd.grad(splice_reference(emb, prev, num_slots), (emb, prev), grad_out)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_thoughts", KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_and_backward_match_reference(fused, dtype, num_thoughts, variant, shape):
    name, device, impl = fused
    num_slots, prev_slots = slots(num_thoughts, variant)
    seed = zlib.crc32(repr((name, dtype, num_thoughts, variant, shape)).encode())  # reproducible
    emb, prev, grad_out = random_inputs(shape, num_slots, prev_slots, dtype, device, seed)
    tokens, batch, hidden = shape
    emb_before, prev_before, grad_before = emb.clone(), prev.clone(), grad_out.clone()

    out, out_buf, pad = poisoned((tokens * num_slots, batch, hidden), dtype, device)
    impl.forward_into(emb, prev, out, num_slots, prev_slots)
    assert torch.equal(out, splice_reference(emb, prev, num_slots))
    assert guards_intact(out_buf, pad)

    grad_prev, prev_buf, pad = poisoned(prev.shape, dtype, device)
    impl.backward_into(grad_out, grad_prev, num_slots, prev_slots)
    # Includes the zeros of the slot a Jacobi pass drops (NaN if the kernel skipped it).
    assert torch.equal(grad_prev, reference_grads(emb, prev, num_slots, grad_out)[1])
    assert guards_intact(prev_buf, pad)

    for before, after in ((emb_before, emb), (prev_before, prev), (grad_before, grad_out)):
        assert torch.equal(before, after), "a kernel wrote into its input"


@pytest.mark.parametrize("block", [16, 64])
def test_triton_rows_split_into_several_blocks(block):
    # Rows of 2 * 37 = 74 elements in blocks of 16 or 64: several programs per row, the last one
    # masked. The default block covers these tiny rows in one program, so force small blocks.
    name, device, impl = fused_backend(("triton", "cpu"))
    num_slots, prev_slots = slots(2, "jacobi")
    emb, prev, grad_out = random_inputs((3, 2, 37), num_slots, prev_slots, torch.float32,
                                        device, seed=block)
    out, out_buf, pad = poisoned((9, 2, 37), torch.float32, device)
    impl.forward_into(emb, prev, out, num_slots, prev_slots, block=block)
    assert torch.equal(out, splice_reference(emb, prev, num_slots)) and guards_intact(out_buf, pad)
    grad_prev, prev_buf, pad = poisoned(prev.shape, torch.float32, device)
    impl.backward_into(grad_out, grad_prev, num_slots, prev_slots, block=block)
    assert torch.equal(grad_prev, reference_grads(emb, prev, num_slots, grad_out)[1])
    assert guards_intact(prev_buf, pad)


@pytest.mark.parametrize("pad", [1, 3, 8])
@pytest.mark.parametrize("hidden", [64, 37])
def test_unaligned_buffers_and_row_strides(fused, pad, hidden):
    # Inputs and outputs offset by `pad` elements and inputs with a row stride larger than the
    # row: the CUDA kernel must drop to narrower vectors, every backend must honour the stride.
    name, device, impl = fused
    dtype, tokens, batch = torch.bfloat16, 4, 3
    num_slots, prev_slots = slots(2, "jacobi")
    emb_full, prev_full, grad_full = random_inputs((tokens, batch, hidden + pad), num_slots,
                                                   prev_slots, dtype, device, seed=pad + hidden)
    # [b, h] rows stay dense while rows sit (h + pad) * b elements apart: slice along s of a
    # buffer viewed with a longer row.
    def strided(full, rows):
        flat = full.reshape(-1)[pad:]
        row = batch * (hidden + pad)
        view = flat.as_strided((rows, batch, hidden), (row, hidden, 1))
        assert not view.is_contiguous()
        return view

    emb, prev = strided(emb_full, tokens), strided(prev_full, tokens * prev_slots)
    grad_out = strided(grad_full, tokens * num_slots)
    out, out_buf, opad = poisoned((tokens * num_slots, batch, hidden), dtype, device, pad=pad)
    impl.forward_into(emb, prev, out, num_slots, prev_slots)
    assert torch.equal(out, splice_reference(emb, prev, num_slots)) and guards_intact(out_buf, opad)
    grad_prev, prev_buf, _ = poisoned(prev.shape, dtype, device, pad=pad)
    impl.backward_into(grad_out, grad_prev, num_slots, prev_slots)
    assert torch.equal(grad_prev, reference_grads(emb, prev, num_slots, grad_out)[1])
    assert guards_intact(prev_buf, pad)


def test_autograd_through_passes_matches_reference(fused):
    # A miniature ponder loop: emb feeds the first pass and every splice, so its gradient is
    # summed over passes by autograd; prev's gradient flows through the shifted slots.
    name, device, _ = fused
    tokens, batch, hidden, thoughts = 3, 2, 5, 2
    gen = torch.Generator().manual_seed(7)
    emb0 = torch.randn(tokens, batch, hidden, generator=gen).to(device)
    weights = [torch.randn(hidden, generator=gen).to(device) for _ in range(5)]

    def run(splice_fn):
        emb = emb0.clone().requires_grad_()
        hidden_state = torch.tanh(emb * weights[0])
        for num_slots in range(2, thoughts + 2):  # growth passes
            hidden_state = torch.tanh(splice_fn(emb, hidden_state, num_slots) * weights[num_slots - 1])
        for weight in weights[thoughts + 1:]:  # Jacobi passes
            hidden_state = torch.tanh(splice_fn(emb, hidden_state, thoughts + 1) * weight)
        loss = hidden_state[thoughts :: thoughts + 1].square().sum()  # slot K of every token
        loss.backward()
        return hidden_state.detach(), emb.grad

    expected = run(splice_reference)
    actual = run(lambda e, h, n: splice(e, h, n, backend=name))
    assert torch.equal(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=0)


def test_noncontiguous_inputs_and_gradients(fused):
    name, device, _ = fused
    tokens, batch, hidden, num_slots = 3, 2, 6, 3
    gen = torch.Generator().manual_seed(3)
    # emb transposed from [b, s, h]: its [b, h] rows are not dense (copied by the op).
    emb = torch.randn(batch, tokens, hidden, generator=gen).to(device).transpose(0, 1)
    # prev: hidden padded (rows not dense either) and offset by one row of a larger buffer.
    prev = torch.randn(tokens * num_slots + 1, batch, hidden + 2, generator=gen).to(device)
    prev = prev[1:, :, :hidden]
    assert not emb.is_contiguous() and not prev.is_contiguous()
    emb.requires_grad_(), prev.requires_grad_()
    out = splice(emb, prev, num_slots, backend=name)
    assert out.is_contiguous()
    assert torch.equal(out, splice_reference(emb, prev, num_slots))
    # An expanded (all-zero-stride) gradient, as out.sum() produces, and a transposed one.
    grad_t = torch.randn(batch, tokens * num_slots, hidden, generator=gen).to(device).transpose(0, 1)
    for grad in (torch.ones(()).to(device).expand_as(out), grad_t):
        actual = torch.autograd.grad(out, (emb, prev), grad, retain_graph=True)
        expected = torch.autograd.grad(splice_reference(emb, prev, num_slots), (emb, prev), grad)
        assert all(torch.equal(a, e) for a, e in zip(actual, expected))


def test_embedding_gradient_is_a_view_of_slot0(fused):
    # No copy for grad_emb: it must alias grad_out's slot 0 (and still equal the reference).
    name, device, _ = fused
    emb = torch.randn(3, 2, 4, device=device, requires_grad=True)
    prev = torch.randn(6, 2, 4, device=device)
    grad = torch.randn(9, 2, 4, device=device)
    (grad_emb,) = torch.autograd.grad(splice(emb, prev, 3, backend=name), emb, grad)
    assert grad_emb.data_ptr() == grad.data_ptr() and grad_emb.stride(0) == 3 * 2 * 4
    assert torch.equal(grad_emb, grad[0::3])


def test_gradient_only_for_inputs_that_need_it(fused):
    name, device, _ = fused
    emb = torch.randn(2, 1, 4, device=device)
    prev = torch.randn(4, 1, 4, device=device, requires_grad=True)
    out = splice(emb, prev, 2, backend=name)
    out.sum().backward()
    assert emb.grad is None
    expected = torch.ones(4, 1, 4, device=device)
    expected[1::2] = 0  # the slot a Jacobi pass drops
    assert torch.equal(prev.grad, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(fused, variant):
    name, device, _ = fused
    num_slots, prev_slots = slots(2, variant)
    emb = torch.randn(2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    prev = torch.randn(2 * prev_slots, 2, 3, dtype=torch.float64, device=device,
                       requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, p: splice(e, p, num_slots, backend=name),
                                    (emb, prev))


def test_empty_shard(fused):
    # A rank may hold no tokens, or a zero-size batch: nothing to launch, shapes still right.
    name, device, _ = fused
    out = splice(torch.empty(0, 2, 4, device=device), torch.empty(0, 2, 4, device=device), 3,
                 backend=name)
    assert out.shape == (0, 2, 4)
    out = splice(torch.empty(2, 0, 4, device=device), torch.empty(4, 0, 4, device=device), 2,
                 backend=name)
    assert out.shape == (4, 0, 4)


def test_cuda_extension_rejects_bad_arguments():
    # The extension is also callable directly; its own checks must stop out-of-bounds launches.
    _, device, impl = fused_backend(("cuda", "cuda"))
    ext = impl.load()
    emb = torch.randn(2, 2, 8, device=device)
    prev = torch.randn(4, 2, 8, device=device)
    bad_calls = {
        "out too short": lambda: ext.splice_forward(emb, prev, torch.empty(3, 2, 8, device=device), 2),
        "out not contiguous": lambda: ext.splice_forward(
            emb, prev, torch.empty(4, 8, 2, device=device).transpose(1, 2), 2),
        "rows not dense": lambda: ext.splice_forward(
            emb.transpose(1, 2).contiguous().transpose(1, 2)[:, :, :4], prev[:, :, :4],
            torch.empty(4, 2, 4, device=device), 2),
        "dtype mismatch": lambda: ext.splice_forward(emb, prev.half(),
                                                     torch.empty(4, 2, 8, device=device), 2),
        "too few slots": lambda: ext.splice_forward(emb, prev, torch.empty(8, 2, 8, device=device), 4),
        "cpu tensor": lambda: ext.splice_forward(emb.cpu(), prev.cpu(), torch.empty(4, 2, 8), 2),
        "grad_out rows": lambda: ext.splice_backward(torch.empty(5, 2, 8, device=device),
                                                     torch.empty_like(prev), 2),
        "grad_prev too few slots": lambda: ext.splice_backward(
            torch.empty(6, 2, 8, device=device), torch.empty(2, 2, 8, device=device), 3),
        "grad_prev not contiguous": lambda: ext.splice_backward(
            torch.empty(4, 2, 8, device=device),
            torch.empty(4, 8, 2, device=device).transpose(1, 2), 2),
    }
    for what, call in bad_calls.items():
        with pytest.raises(RuntimeError, match="splice"):
            call()
            pytest.fail(f"no error for: {what}")


def test_env_interpreter_route():
    """The documented route: TRITON_INTERPRET=1 set before the kernels are imported."""
    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import torch
        from triton.runtime.interpreter import InterpretedFunction
        from megatron_ponder.ops import splice, splice_reference
        from megatron_ponder.ops import splice_triton
        assert isinstance(splice_triton._splice_fwd_kernel, InterpretedFunction)
        assert isinstance(splice_triton._splice_bwd_kernel, InterpretedFunction)
        torch.manual_seed(0)
        for num_slots, prev_slots in ((3, 2), (3, 3)):
            emb = torch.randn(3, 2, 5, dtype=torch.bfloat16, requires_grad=True)
            prev = torch.randn(3 * prev_slots, 2, 5, dtype=torch.bfloat16, requires_grad=True)
            grad = torch.randn(3 * num_slots, 2, 5, dtype=torch.bfloat16)
            out = splice(emb, prev, num_slots, backend="triton")
            ref = splice_reference(emb, prev, num_slots)
            assert torch.equal(out, ref)
            got = torch.autograd.grad(out, (emb, prev), grad)
            want = torch.autograd.grad(ref, (emb, prev), grad)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        print("interpreter route ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "interpreter route ok" in result.stdout
