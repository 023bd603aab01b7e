"""KV-cache generation: exact against uncached recomputation (ours and the independent
reference), padded batches equal single prompts, vanilla equals transformers."""

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_ponder.inference import JacobiSchedule, KVCache, decode_token, run_ponder_passes
from megatron_ponder.inference.generation import vocab_logits
from tests.inference.helpers import left_padded, prompt, tiny_ponder
from tests.reference.ponder_reference import reference_sequential
from tests.tiny_models import VOCAB, save_tiny_hf

pytestmark = pytest.mark.usefixtures("single_process")

PROMPT_LENGTH, NEW_TOKENS = 5, 6


@pytest.fixture(scope="module", params=[("llama", 1), ("llama", 2), ("gpt_neox", 1),
                                        ("gpt_neox", 2)], ids=lambda p: f"{p[0]}-K{p[1]}")
def ponder(request, tmp_path_factory):
    arch, k = request.param
    folder, model = tiny_ponder(tmp_path_factory.mktemp(f"{arch}{k}"), arch, k)
    with open(f"{folder}/config.json") as f:
        hf_config = json.load(f)
    return model, k, hf_config, load_file(f"{folder}/model.safetensors")


def _converged(k: int, length: int):
    """Adaptive prefill to the exact fixed point (tolerance 0), capped where it must be."""
    return dict(jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                max_jacobi_iterations=k * length + 1)


def test_cached_greedy_equals_uncached_recomputation(ponder):
    model, k, hf_config, hf_state = ponder
    ids = prompt(PROMPT_LENGTH, seed=1)[None]
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True,
                         **_converged(k, PROMPT_LENGTH))
    assert out.prefill.converged
    assert out.sequences.shape == (1, PROMPT_LENGTH + NEW_TOKENS)
    assert torch.equal(out.sequences[:, :PROMPT_LENGTH], ids)

    # Uncached: rerun the whole sequence for every token, (a) with our forward at the
    # sequential-exact J, (b) with the independent sequential reference.
    ours, reference = ids, ids
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(ours, jacobi_iterations=k * ours.shape[1] + 1).logits[:, -1]
            ours = torch.cat([ours, logits.argmax(-1, keepdim=True)], dim=1)
            logits = reference_sequential(hf_config, hf_state, reference, k)[:, -1]
            reference = torch.cat([reference, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, ours)
    assert torch.equal(out.sequences, reference)
    assert len(set(out.sequences[0, PROMPT_LENGTH:].tolist())) > 1  # not a degenerate model


def test_decode_logits_match_sequential_reference(ponder):
    """Teacher-forced: prefill + K+1 cached steps per token give the exact sequential logits
    of every position (a stronger check than argmax tokens)."""
    model, k, hf_config, hf_state = ponder
    full = prompt(PROMPT_LENGTH + NEW_TOKENS, seed=12)[None]
    expected = reference_sequential(hf_config, hf_state, full, k)[0, PROMPT_LENGTH - 1:]
    schedule = JacobiSchedule(iterations=k * PROMPT_LENGTH + 1, tolerance=0.0)
    cache = KVCache(1, (k + 1) * full.shape[1])
    with torch.no_grad():
        hidden, _ = run_ponder_passes(model.model, full[:, :PROMPT_LENGTH], k, schedule,
                                      cache=cache)
        got = [vocab_logits(model.model, hidden[-1])[0]]
        for position in range(PROMPT_LENGTH, full.shape[1]):
            got.append(decode_token(model.model, full[:, position], torch.tensor([position]),
                                    cache, k)[0])
    assert cache.length == (k + 1) * full.shape[1]
    torch.testing.assert_close(torch.stack(got), expected, atol=2e-5, rtol=0)


def test_unconverged_prefill_differs_from_the_exact_logits(ponder):
    """The previous test is sensitive to the prefill: with J=0 the cached logits are off."""
    model, k, hf_config, hf_state = ponder
    ids = prompt(PROMPT_LENGTH, seed=12)[None]
    expected = reference_sequential(hf_config, hf_state, ids, k)[0, -1]
    with torch.no_grad():
        hidden, report = run_ponder_passes(model.model, ids, k, JacobiSchedule(0),
                                           cache=KVCache(1, (k + 1) * PROMPT_LENGTH))
    assert report.passes == k + 1
    assert (vocab_logits(model.model, hidden[-1])[0] - expected).abs().max() > 1e-3


def test_padded_batch_gives_the_same_completions_as_each_prompt_alone(ponder):
    model, k, _, _ = ponder
    prompts = [prompt(3, seed=1), prompt(8, seed=2), prompt(5, seed=3)]
    alone = [model.generate(p[None], max_new_tokens=NEW_TOKENS)[0, len(p):] for p in prompts]
    for pad_id in (0, VOCAB - 1):  # the pad id must not matter
        ids, mask = left_padded(prompts, pad_id)
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)
        assert batch.shape == (3, 8 + NEW_TOKENS)
        assert torch.equal(batch[:, :8], ids)
        for row, expected in enumerate(alone):
            assert torch.equal(batch[row, 8:], expected), (pad_id, row)


def test_padded_decode_logits_equal_single_prompt_logits(ponder):
    """Per-row positions and key masks, checked on logits: each row of a left-padded batch,
    teacher-forced through prefill and decode, scores exactly like that prompt alone."""
    model, k, _, _ = ponder
    prompts = [prompt(2, seed=4), prompt(6, seed=5)]
    forced = torch.stack([prompt(3, seed=6), prompt(3, seed=7)])  # [B, 3] next tokens

    def cached_logits(ids, mask, next_tokens):
        cache = KVCache(ids.shape[0], (k + 1) * (ids.shape[1] + next_tokens.shape[1]))
        with torch.no_grad():
            hidden, _ = run_ponder_passes(model.model, ids, k, JacobiSchedule(3),
                                          token_is_real=mask.bool(), cache=cache)
            steps = [vocab_logits(model.model, hidden[-1])]
            positions = mask.sum(dim=1)
            for step in range(next_tokens.shape[1]):
                steps.append(decode_token(model.model, next_tokens[:, step], positions + step,
                                          cache, k))
        return torch.stack(steps, dim=1)  # [B, steps, V]

    ids, mask = left_padded(prompts)
    batched = cached_logits(ids, mask, forced)
    assert torch.isfinite(batched).all()
    for row, p in enumerate(prompts):
        single = cached_logits(p[None], torch.ones(1, len(p), dtype=torch.long), forced[[row]])
        torch.testing.assert_close(batched[row], single[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_vanilla_generation_matches_transformers(tmp_path, arch):
    reference = save_tiny_hf(tmp_path, arch)
    from megatron_ponder.hf import from_pretrained

    model = from_pretrained(str(tmp_path), engine="megatron")
    assert model.ponder_config.thoughts == 0
    prompts = [prompt(4, seed=8), prompt(7, seed=9)]
    ids, mask = left_padded(prompts)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)
    for row, p in enumerate(prompts):
        sequence = p[None]
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                next_id = reference(sequence).logits[:, -1].argmax(-1, keepdim=True)
                sequence = torch.cat([sequence, next_id], dim=1)
        assert torch.equal(ours[row, ids.shape[1]:], sequence[0, len(p):]), row


def test_generation_rejects_right_padding(ponder):
    model = ponder[0]
    ids = torch.ones(2, 4, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match="LEFT-padded"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2)
