"""Sampling options and stopping: top-k / top-p / temperature filters, seeded sampling,
eos (int or list) and custom stopping criteria in ``generate``."""

import math

import pytest
import torch

from megatron_ponder.inference import SamplingConfig, choose_next_tokens, filter_logits
from tests.inference.helpers import left_padded, prompt, tiny_ponder

pytestmark = pytest.mark.usefixtures("single_process")

NEW = 8
PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
LOGITS = PROBS.log()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_ponder(tmp_path_factory.mktemp("neox"), "gpt_neox", 1)[1]


def _kept(config):
    return torch.isfinite(filter_logits(LOGITS, config))[0].nonzero().flatten().tolist()


def test_top_k_keeps_the_k_most_likely():
    assert _kept(SamplingConfig(do_sample=True, top_k=1)) == [1]
    assert _kept(SamplingConfig(do_sample=True, top_k=2)) == [1, 3]
    assert _kept(SamplingConfig(do_sample=True, top_k=0)) == [0, 1, 2, 3]


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert _kept(SamplingConfig(do_sample=True, top_p=0.5)) == [1]
    assert _kept(SamplingConfig(do_sample=True, top_p=0.7)) == [1, 3]
    assert _kept(SamplingConfig(do_sample=True, top_p=0.9)) == [1, 2, 3]
    assert _kept(SamplingConfig(do_sample=True, top_p=1e-6)) == [1]


def test_temperature_scales_logits():
    scaled = filter_logits(LOGITS, SamplingConfig(do_sample=True, temperature=0.5))
    torch.testing.assert_close(scaled, LOGITS * 2)


def test_sampling_follows_the_filtered_distribution():
    config = SamplingConfig(do_sample=True, top_k=2)
    draws = choose_next_tokens(LOGITS.expand(4000, -1), config,
                               torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}
    share = (draws == 1).float().mean().item()
    assert math.isclose(share, 0.5 / 0.8, abs_tol=0.03)


def test_invalid_options():
    with pytest.raises(ValueError):
        SamplingConfig(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingConfig(top_k=-1)


def test_top_k_1_and_tiny_top_p_equal_greedy(model):
    ids, mask = left_padded([prompt(4, seed=1), prompt(6, seed=2)])
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    for options in (dict(top_k=1), dict(top_p=1e-6)):
        sampled = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True,
                                 temperature=3.0, generator=torch.Generator().manual_seed(0),
                                 **options)
        assert torch.equal(sampled, greedy), options


def test_seeded_sampling_is_reproducible_and_samples(model):
    ids = prompt(5, seed=3)[None].expand(4, -1)

    def run(seed):
        return model.generate(ids, max_new_tokens=NEW, do_sample=True, temperature=5.0,
                              generator=torch.Generator().manual_seed(seed))

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))
    # Four identical prompts, hot temperature: the rows diverge.
    assert len({tuple(row) for row in first[:, 5:].tolist()}) > 1


def _first_new_token_unseen_before(row):
    """(index, id) of the first generated token that did not occur earlier in ``row``."""
    for index in range(1, len(row)):
        if row[index] not in row[:index]:
            return index, row[index]
    raise AssertionError(f"no fresh token in {row}")


def test_eos_stops_a_row_and_pads_it(model):
    prompts = [prompt(4, seed=4), prompt(6, seed=5)]
    ids, mask = left_padded(prompts)
    width = ids.shape[1]
    free = model.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    row0 = free[0, width:].tolist()
    stop_index, stop_id = _first_new_token_unseen_before(row0)
    assert stop_index < NEW - 1  # so that there is padding to check

    pad_id = 96
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=stop_id,
                         pad_token_id=pad_id, return_dict_in_generate=True)
    new = out.sequences[:, width:]
    assert new[0, :stop_index + 1].tolist() == row0[:stop_index + 1]
    assert set(new[0, stop_index + 1:].tolist()) <= {pad_id}
    assert bool(out.finished[0])
    # The other row runs on unchanged until it emits the stop id itself (if it does).
    row1 = free[1, width:].tolist()
    cut = row1.index(stop_id) + 1 if stop_id in row1 else new.shape[1]
    assert new[1, :cut].tolist() == row1[:cut]


def test_generation_ends_when_every_row_stopped(model):
    ids = prompt(5, seed=6)[None]
    free = model.generate(ids, max_new_tokens=NEW)[0, 5:].tolist()
    stop_index, stop_id = _first_new_token_unseen_before(free)
    assert stop_index < NEW - 1
    # eos as a list (another id that never shows up must not matter); default pad = first eos.
    out = model.generate(ids, max_new_tokens=NEW, eos_token_id=[stop_id, 10_000])
    assert out[0, 5:].tolist() == free[:stop_index + 1]


def test_stopping_criteria_and_max_new_tokens(model):
    ids = prompt(5, seed=7)[None]
    stop_after_three = lambda new_ids: torch.tensor([new_ids.shape[1] >= 3])  # noqa: E731
    out = model.generate(ids, max_new_tokens=NEW, stopping_criteria=stop_after_three)
    assert out.shape == (1, 5 + 3)
    assert model.generate(ids, max_new_tokens=0).shape == (1, 5)
    assert model.generate(ids, max_new_tokens=2).shape == (1, 7)
