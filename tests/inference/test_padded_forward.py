"""PonderForCausalLM.forward on padded batches: each row scores as if alone, padding stays
finite and out of the loss."""

import pytest
import torch
import torch.nn.functional as F

from megatron_ponder.inference.attention_hooks import blocked_keys, token_positions
from tests.inference.helpers import left_padded, prompt, tiny_ponder
from tests.tiny_models import VOCAB

pytestmark = pytest.mark.usefixtures("single_process")


@pytest.fixture(scope="module", params=[("llama", 0), ("llama", 1), ("gpt_neox", 1),
                                        ("gpt_neox", 2)], ids=lambda p: f"{p[0]}-K{p[1]}")
def model(request, tmp_path_factory):
    arch, k = request.param
    return tiny_ponder(tmp_path_factory.mktemp(f"{arch}{k}"), arch, k)[1]


def _right_padded(prompts, pad_id=0):
    ids, mask = left_padded([p.flip(0) for p in prompts], pad_id)
    return ids.flip(1), mask.flip(1)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_padded_logits_equal_unpadded_rows(model, padding):
    prompts = [prompt(3, seed=1), prompt(9, seed=2), prompt(6, seed=3)]
    ids, mask = (left_padded if padding == "left" else _right_padded)(prompts, pad_id=5)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=ids)
        singles = [model(p[None], labels=p[None]) for p in prompts]
    # Padded positions (and padded query rows in every pass) stay finite: no fully masked
    # softmax row.
    assert torch.isfinite(out.logits).all()
    expected_loss_sum = 0.0
    for row, (p, single) in enumerate(zip(prompts, singles)):
        real = mask[row].bool()
        torch.testing.assert_close(out.logits[row, real], single.logits[0], atol=1e-5, rtol=0)
        expected_loss_sum += single.loss * (len(p) - 1)
    # The loss covers exactly the real next-token targets of every row.
    expected = expected_loss_sum / sum(len(p) - 1 for p in prompts)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)


def test_all_real_mask_is_the_unmasked_forward(model):
    ids = torch.stack([prompt(7, seed=4), prompt(7, seed=5)])
    with torch.no_grad():
        plain = model(ids).logits
        masked = model(ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(masked, plain, atol=0, rtol=0)


def test_logits_to_keep_returns_the_last_positions(model):
    ids, mask = left_padded([prompt(4, seed=8), prompt(6, seed=9)])
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        last = model(ids, attention_mask=mask, logits_to_keep=3).logits
    assert last.shape == (2, 3, VOCAB)
    torch.testing.assert_close(last, full[:, -3:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=ids, logits_to_keep=3)


def test_labels_minus_100_are_ignored(model):
    ids = prompt(8, seed=6)[None]
    labels = ids.clone()
    labels[0, 5:] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[0, :4], ids[0, 1:5])
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)


def test_mask_shape_must_match(model):
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))


def test_positions_start_at_each_rows_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert token_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4],
                                              [0, 1, 1, 1, 1]]


def test_key_mask_is_causal_hides_padding_and_never_blocks_a_whole_row():
    key_is_real = torch.tensor([[False, False, True, True, True, True]])
    blocked = blocked_keys(key_is_real, 0, 6)[0, 0]
    allowed = ~blocked
    assert not blocked.all(dim=-1).any()
    for q in range(6):
        for k in range(6):
            expected = k <= q and (bool(key_is_real[0, k]) or k == q)
            assert bool(allowed[q, k]) == expected, (q, k)
    # Decode: one query after 6 cached slots sees every real slot and itself.
    step = blocked_keys(torch.cat([key_is_real, torch.ones(1, 1, dtype=torch.bool)], 1), 6, 1)
    assert (~step[0, 0, 0]).tolist() == [False, False, True, True, True, True, True]
    assert blocked_keys(torch.ones(2, 4, dtype=torch.bool), 0, 4) is None


def test_vocab_is_the_models(model):
    with torch.no_grad():
        assert model(prompt(3, seed=7)[None]).logits.shape == (1, 3, VOCAB)
