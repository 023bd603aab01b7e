"""Generation with the transformers-native model's cache: teacher-forced cached decoding gives
the exact sequential logits (the training model with enough Jacobi passes), an unconverged
prefill does not; vanilla generation equals stock transformers'; the Pause and Loop baselines
generate what greedy recomputation by the training model gives; a row that hits eos is padded
while the others run on; seeded sampling is reproducible and not greedy. Sampling filters are
transformers' own code and not tested here."""

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import from_pretrained, load_training_model, save_pretrained
from megatron_ponder.model import build_model
from tests.tiny_models import VOCAB, exact_logits, greedy_recomputation, left_padded, prompt, \
    save_tiny_hf, save_tiny_ponder

pytestmark = [pytest.mark.usefixtures("single_process"), pytest.mark.filterwarnings("ignore")]

PROMPT_LENGTH, NEW_TOKENS = 5, 6


@pytest.fixture(scope="module", params=[("llama", 1), ("llama", 2), ("gpt_neox", 1),
                                        ("gpt_neox", 2)], ids=lambda p: f"{p[0]}-K{p[1]}")
def ponder(request, tmp_path_factory):
    """(native model, training model, K) of one tiny folder."""
    arch, k = request.param
    folder = save_tiny_ponder(tmp_path_factory.mktemp(f"{arch}{k}"), arch, k)
    return from_pretrained(folder), load_training_model(folder), k


def test_decode_logits_equal_the_sequential_computation(ponder):
    """Teacher-forced: the prefill converged (tolerance 0), then K+1 cached steps per token,
    give the exact logits of every position (stronger than comparing argmax tokens)."""
    native, training, k = ponder
    full = prompt(PROMPT_LENGTH + NEW_TOKENS, seed=12)[None]
    expected = exact_logits(training, full)[0, PROMPT_LENGTH - 1:]
    with torch.no_grad():
        out = native(full[:, :PROMPT_LENGTH], use_cache=True, jacobi_iterations="adaptive",
                     jacobi_tolerance=0.0, max_jacobi_iterations=k * PROMPT_LENGTH + 1)
        assert out.thought_change == 0.0
        got, cache = [out.logits[0, -1]], out.ponder_cache
        for position in range(PROMPT_LENGTH, full.shape[1]):
            got.append(native(full[:, position:position + 1], ponder_cache=cache).logits[0, -1])
    layers = native.config.num_hidden_layers
    assert cache.lengths == [(k + 1) * full.shape[1]] * layers
    assert cache.get_seq_length() == full.shape[1]
    torch.testing.assert_close(torch.stack(got), expected, atol=2e-5, rtol=0)


def test_unconverged_prefill_differs_from_the_exact_logits(ponder):
    """The previous test is sensitive to the prefill: with J = 0 the cached logits are off."""
    native, training, _ = ponder
    ids = prompt(PROMPT_LENGTH, seed=12)[None]
    with torch.no_grad():
        out = native(ids, use_cache=True, jacobi_iterations=0)
    assert out.jacobi_iterations == 0
    assert (out.logits[0, -1] - exact_logits(training, ids)[0, -1]).abs().max() > 1e-3


def test_converged_greedy_generation_equals_recomputation(ponder):
    native, training, k = ponder
    ids = prompt(PROMPT_LENGTH, seed=1)[None]
    generated = native.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                                max_jacobi_iterations=k * PROMPT_LENGTH + 1)
    assert generated.shape == (1, PROMPT_LENGTH + NEW_TOKENS)
    assert torch.equal(generated, greedy_recomputation(training, ids, NEW_TOKENS))
    assert len(set(generated[0, PROMPT_LENGTH:].tolist())) > 1  # not a degenerate model


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_vanilla_generation_matches_transformers(tmp_path, arch):
    reference = save_tiny_hf(tmp_path, arch)
    native = from_pretrained(str(tmp_path))
    assert native.config.thoughts == 0
    prompts = [prompt(4, seed=8), prompt(7, seed=9)]
    ids, mask = left_padded(prompts)
    ours = native.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                           do_sample=False, pad_token_id=0)
    for row, p in enumerate(prompts):
        sequence = p[None]
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                next_id = reference(sequence).logits[:, -1].argmax(-1, keepdim=True)
                sequence = torch.cat([sequence, next_id], dim=1)
        assert torch.equal(ours[row, ids.shape[1]:], sequence[0, len(p):]), row


@pytest.mark.parametrize("method", ["pause", "loop"])
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_baseline_generation_equals_recomputation_by_the_training_model(tmp_path, arch, method):
    torch.manual_seed(3)
    training = build_model(ModelConfig(arch=arch, num_layers=2, hidden_size=32,
                                       num_attention_heads=4, vocab_size=VOCAB),
                           PonderConfig(num_latent_thoughts=2, ponder_method=method))
    with torch.no_grad():  # a less uniform model than the init, so greedy tokens vary
        for param in training.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    training.eval()
    native = from_pretrained(save_pretrained(training, str(tmp_path)))
    ids = prompt(PROMPT_LENGTH, seed=2)[None]
    generated = native.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(generated, greedy_recomputation(training, ids, NEW_TOKENS))
    assert len(set(generated[0, PROMPT_LENGTH:].tolist())) > 1


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    return from_pretrained(save_tiny_ponder(tmp_path_factory.mktemp("neox"), "gpt_neox", 1))


def _first_fresh_token(row):
    """(index, id) of the first token of ``row`` that did not occur earlier in it."""
    for index in range(1, len(row)):
        if row[index] not in row[:index]:
            return index, row[index]
    raise AssertionError(f"no fresh token in {row}")


def test_eos_stops_a_row_and_pads_it_while_the_other_runs_on(neox):
    """After a row ends, generate feeds it pad tokens: the other row's tokens must not
    change."""
    ids, mask = left_padded([prompt(4, seed=4), prompt(6, seed=5)])
    width, new = ids.shape[1], 8
    free = neox.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                         pad_token_id=0)
    row0 = free[0, width:].tolist()
    stop_index, stop_id = _first_fresh_token(row0)
    assert stop_index < new - 1  # so that there is padding to check
    pad_id = VOCAB - 1
    out = neox.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                        eos_token_id=stop_id, pad_token_id=pad_id)[:, width:]
    assert out[0, :stop_index + 1].tolist() == row0[:stop_index + 1]
    assert set(out[0, stop_index + 1:].tolist()) <= {pad_id}
    row1 = free[1, width:].tolist()
    cut = row1.index(stop_id) + 1 if stop_id in row1 else new
    assert out[1, :cut].tolist() == row1[:cut]


def test_seeded_sampling_is_reproducible_and_not_greedy(neox):
    ids = prompt(5, seed=3)[None].expand(4, -1)

    def sample(seed):
        torch.manual_seed(seed)
        return neox.generate(ids, max_new_tokens=8, do_sample=True, temperature=5.0, top_k=0,
                             pad_token_id=0)

    first = sample(0)
    assert torch.equal(first, sample(0))
    assert not torch.equal(first, sample(1))
    greedy = neox.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert any(not torch.equal(row, greedy[0]) for row in first)
    # Four identical prompts, hot temperature: the rows diverge.
    assert len({tuple(row) for row in first[:, 5:].tolist()}) > 1
