"""The torch reference splice: its definition, its gradient, and argument checking."""

import pytest
import torch

from megatron_ponder.ops import splice, splice_reference
from tests.ops.splice_cases import KS, VARIANTS, slots


def splice_by_definition(emb, prev, num_slots):
    """docs/method.md, written out: new[t, 0] = e_t, new[t, s] = prev[t, s - 1]."""
    tokens, batch, hidden = emb.shape
    prev_slots = prev.shape[0] // tokens
    out = torch.empty(tokens * num_slots, batch, hidden, dtype=emb.dtype)
    for t in range(tokens):
        out[t * num_slots] = emb[t]
        for s in range(1, num_slots):
            out[t * num_slots + s] = prev[t * prev_slots + s - 1]
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_thoughts", KS)
def test_reference_matches_definition(num_thoughts, variant):
    num_slots, prev_slots = slots(num_thoughts, variant)
    emb = torch.randn(5, 2, 3)
    prev = torch.randn(5 * prev_slots, 2, 3)
    out = splice_reference(emb, prev, num_slots)
    assert out.is_contiguous()
    assert torch.equal(out, splice_by_definition(emb, prev, num_slots))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_thoughts", [1, 2, 3])
def test_reference_gradcheck_float64(num_thoughts, variant):
    num_slots, prev_slots = slots(num_thoughts, variant)
    emb = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(3 * prev_slots, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, p: splice_reference(e, p, num_slots), (emb, prev))


def test_reference_gradient_is_slot0_and_shift():
    # The backward contract the fused kernels implement, stated independently of autograd.
    emb = torch.randn(2, 1, 3, requires_grad=True)
    prev = torch.randn(6, 1, 3, requires_grad=True)  # Jacobi: 3 slots, the last one dropped
    grad = torch.randn(6, 1, 3)
    grad_emb, grad_prev = torch.autograd.grad(splice_reference(emb, prev, 3), (emb, prev), grad)
    assert torch.equal(grad_emb, grad[0::3])
    assert torch.equal(grad_prev[0::3], grad[1::3]) and torch.equal(grad_prev[1::3], grad[2::3])
    assert torch.equal(grad_prev[2::3], torch.zeros(2, 1, 3))


def test_reference_accepts_noncontiguous_prev():
    emb = torch.randn(2, 3, 4)
    prev = torch.randn(3, 4, 4).transpose(0, 1)  # [4, 3, 4], not viewable as slots
    assert torch.equal(splice_reference(emb, prev, 2),
                       splice_by_definition(emb, prev.contiguous(), 2))


BAD_ARGUMENTS = {
    "emb not 3-d": ((torch.randn(2, 4), torch.randn(2, 1, 4), 2), ValueError, r"\[s, b, h\]"),
    "batch differs": ((torch.randn(2, 1, 4), torch.randn(2, 2, 4), 2), ValueError, "whole number"),
    "hidden differs": ((torch.randn(2, 1, 4), torch.randn(2, 1, 5), 2), ValueError, "whole number"),
    "rows not whole slots": ((torch.randn(2, 1, 4), torch.randn(3, 1, 4), 2), ValueError,
                             "whole number"),
    "too few slots": ((torch.randn(2, 1, 4), torch.randn(2, 1, 4), 3), ValueError, "cannot build"),
    "zero slots": ((torch.randn(2, 1, 4), torch.randn(2, 1, 4), 0), ValueError, "cannot build"),
    "num_slots not int": ((torch.randn(2, 1, 4), torch.randn(2, 1, 4), 2.0), TypeError, "int"),
    "dtype mismatch": ((torch.randn(2, 1, 4), torch.randn(2, 1, 4).half(), 2), TypeError, "dtype"),
    "prev without tokens": ((torch.randn(0, 1, 4), torch.randn(2, 1, 4), 2), ValueError,
                            "no tokens"),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_clear_errors(case, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    args, error, message = BAD_ARGUMENTS[case]
    with pytest.raises(error, match=message):
        splice(*args, backend=backend)
