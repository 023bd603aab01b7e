"""Padded batches in the transformers-native model: each row scores (and, through the cache,
decodes and generates) as if it were alone, left or right padded, whatever the pad id, for
PonderLM-2, vanilla and the Pause and Loop baselines; padding stays finite; the loss is the
plain shifted cross entropy of the labels (-100 ignored)."""

import pytest
import torch
import torch.nn.functional as F

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import from_pretrained, load_training_model, save_pretrained
from megatron_ponder.hf.remote.modeling_ponderlm2 import _pass_mask, _token_positions
from megatron_ponder.model import build_model
from tests.tiny_models import VOCAB, left_padded, prompt, save_tiny_ponder

pytestmark = [pytest.mark.usefixtures("single_process"), pytest.mark.filterwarnings("ignore")]


@pytest.fixture(scope="module", params=[("llama", 0), ("llama", 1), ("gpt_neox", 1),
                                        ("gpt_neox", 2)], ids=lambda p: f"{p[0]}-K{p[1]}")
def models(request, tmp_path_factory):
    """(native model, training model) of one tiny folder."""
    arch, k = request.param
    folder = save_tiny_ponder(tmp_path_factory.mktemp(f"{arch}{k}"), arch, k)
    return from_pretrained(folder), load_training_model(folder)


def _right_padded(prompts, pad_id=0):
    ids, mask = left_padded([p.flip(0) for p in prompts], pad_id)
    return ids.flip(1), mask.flip(1)


def _next_token_labels(ids, mask):
    """Targets of real tokens that follow a real token; -100 elsewhere (the loss is not
    masked by ``attention_mask`` itself)."""
    real = mask.bool()
    labels = torch.full_like(ids, -100)
    follows_real = real[:, 1:] & real[:, :-1]
    labels[:, 1:][follows_real] = ids[:, 1:][follows_real]
    return labels


@pytest.mark.parametrize("padding", ["left", "right"])
def test_padded_logits_equal_the_training_model_on_each_row_alone(models, padding):
    native, training = models
    prompts = [prompt(3, seed=1), prompt(9, seed=2), prompt(6, seed=3)]
    ids, mask = (left_padded if padding == "left" else _right_padded)(prompts, pad_id=5)
    with torch.no_grad():
        out = native(ids, attention_mask=mask, labels=_next_token_labels(ids, mask),
                     use_cache=False)
        # The training forward of each row without padding; its per-token losses of the
        # shifted targets (the last position has none).
        alone = [training(p[None])[0] for p in prompts]
        losses = [training(p[None], labels=p[None].roll(-1, dims=1))[0, :-1] for p in prompts]
    # Padded positions (and padded query slots in every pass) stay finite: no fully masked
    # softmax row.
    assert torch.isfinite(out.logits).all()
    for row, expected in enumerate(alone):
        torch.testing.assert_close(out.logits[row, mask[row].bool()], expected, atol=1e-5,
                                   rtol=0)
    torch.testing.assert_close(out.loss, torch.cat(losses).mean(), atol=1e-5, rtol=0)


def test_all_real_mask_is_the_unmasked_forward(models):
    native = models[0]
    ids = torch.stack([prompt(7, seed=4), prompt(7, seed=5)])
    with torch.no_grad():
        plain = native(ids, use_cache=False).logits
        masked = native(ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    assert plain.shape == (2, 7, VOCAB)
    torch.testing.assert_close(masked, plain, atol=0, rtol=0)


def test_logits_to_keep_returns_the_last_positions(models):
    native = models[0]
    ids, mask = left_padded([prompt(4, seed=8), prompt(6, seed=9)])
    with torch.no_grad():
        full = native(ids, attention_mask=mask, use_cache=False).logits
        last = native(ids, attention_mask=mask, logits_to_keep=3, use_cache=False).logits
    assert last.shape == (2, 3, VOCAB)
    torch.testing.assert_close(last, full[:, -3:], atol=1e-6, rtol=0)


def test_labels_minus_100_are_ignored(models):
    native = models[0]
    ids = prompt(8, seed=6)[None]
    labels = ids.clone()
    labels[0, 5:] = -100
    with torch.no_grad():
        out = native(ids, labels=labels, use_cache=False)
    expected = F.cross_entropy(out.logits[0, :4], ids[0, 1:5])
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)


def test_mask_shape_must_match(models):
    with pytest.raises(ValueError, match="attention_mask"):
        models[0](torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))


def test_padded_batch_generates_what_each_prompt_generates_alone(models):
    native = models[0]
    prompts = [prompt(3, seed=1), prompt(8, seed=2), prompt(5, seed=3)]
    alone = [native.generate(p[None], max_new_tokens=6, do_sample=False)[0, len(p):]
             for p in prompts]
    for pad_id in (0, VOCAB - 1):  # the pad id must not matter
        ids, mask = left_padded(prompts, pad_id)
        batch = native.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                pad_token_id=pad_id)
        assert batch.shape == (3, 8 + 6) and torch.equal(batch[:, :8], ids)
        for row, expected in enumerate(alone):
            assert torch.equal(batch[row, 8:], expected), (pad_id, row)


def test_padded_decode_logits_equal_single_prompt_logits(models):
    """Per-row positions and key masks, checked on logits: each row of a left-padded batch,
    teacher-forced through the prefill and cached decoding, scores exactly like that prompt
    alone."""
    native = models[0]
    prompts = [prompt(2, seed=4), prompt(6, seed=5)]
    forced = torch.stack([prompt(3, seed=6), prompt(3, seed=7)])  # [B, 3] next tokens

    def cached_logits(ids, mask, next_tokens):
        with torch.no_grad():
            out = native(ids, attention_mask=mask, use_cache=True)
            steps, cache = [out.logits[:, -1]], out.ponder_cache
            for step in range(next_tokens.shape[1]):
                out = native(next_tokens[:, step:step + 1], ponder_cache=cache)
                steps.append(out.logits[:, -1])
        return torch.stack(steps, dim=1)  # [B, steps, V]

    ids, mask = left_padded(prompts)
    batched = cached_logits(ids, mask, forced)
    assert torch.isfinite(batched).all()
    for row, p in enumerate(prompts):
        single = cached_logits(p[None], torch.ones(1, len(p), dtype=torch.long), forced[[row]])
        torch.testing.assert_close(batched[row], single[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["pause", "loop"])
def test_baseline_padded_rows_score_like_the_training_model_alone(tmp_path, method):
    torch.manual_seed(3)
    training = build_model(ModelConfig(arch="gpt_neox", num_layers=2, hidden_size=32,
                                       num_attention_heads=4, vocab_size=VOCAB),
                           PonderConfig(num_latent_thoughts=2, ponder_method=method)).eval()
    native = from_pretrained(save_pretrained(training, str(tmp_path)))
    assert native.config.forward_method == method
    prompts = [prompt(5, seed=1), prompt(3, seed=2)]
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        logits = native(ids, attention_mask=mask, use_cache=False).logits
        for row, p in enumerate(prompts):
            torch.testing.assert_close(logits[row, mask[row].bool()], training(p[None])[0],
                                       atol=1e-5, rtol=0)


def test_positions_start_at_each_rows_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert _token_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4],
                                               [0, 1, 1, 1, 1]]


def test_pass_mask_is_causal_hides_padding_and_never_blocks_a_whole_row():
    slot_is_real = torch.tensor([[False, False, True, True, True, True]])
    allowed = _pass_mask(slot_is_real)[0, 0]
    assert allowed.any(dim=-1).all()
    for query in range(6):
        for key in range(6):
            expected = key <= query and (bool(slot_is_real[0, key]) or key == query)
            assert bool(allowed[query, key]) == expected, (query, key)
