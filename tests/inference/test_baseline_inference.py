"""Scoring, generation and Hugging Face export of the Pause and Loop baselines."""

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import from_pretrained
from megatron_ponder.hf.causal_lm import PonderForCausalLM
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.model import build_model

pytestmark = pytest.mark.usefixtures("single_process")
VOCAB = 53


def _wrapped(method, k=2, arch="llama"):
    torch.manual_seed(3)
    model = build_model(ModelConfig(arch=arch, num_layers=2, hidden_size=32,
                                    num_attention_heads=4, vocab_size=VOCAB),
                        PonderConfig(num_latent_thoughts=k, ponder_method=method))
    with torch.no_grad():  # a less uniform model than the init, so greedy tokens vary
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    return PonderForCausalLM(model).eval()


def _ids(length=6, batch=1, seed=2):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["pause", "loop"])
def test_scoring_equals_the_training_forward(method):
    wrapped = _wrapped(method)
    ids = _ids(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(ids).logits, wrapped.model(ids).float())


@pytest.mark.parametrize("method", ["pause", "loop"])
def test_padded_rows_score_like_unpadded(method):
    wrapped = _wrapped(method)
    ids = _ids(length=5)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(padded, attention_mask=mask).logits[:, 2:],
                                   wrapped(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_pause_cached_generation_equals_recomputation(arch):
    wrapped = _wrapped("pause", arch=arch)
    ids = _ids()
    cached = wrapped.generate(ids, max_new_tokens=6)
    recomputed = ids
    with torch.no_grad():
        for _ in range(6):
            next_id = wrapped(recomputed).logits[:, -1].argmax(-1, keepdim=True)
            recomputed = torch.cat([recomputed, next_id], dim=1)
    assert torch.equal(cached, recomputed)
    assert len(set(cached[0, ids.shape[1]:].tolist())) > 1


def test_loop_generation_says_it_is_not_supported():
    with pytest.raises(ValueError, match="ponder-method loop"):
        _wrapped("loop").generate(_ids(), max_new_tokens=2)


@pytest.mark.parametrize("method", ["pause", "loop"])
def test_hf_round_trip_keeps_the_baseline(tmp_path, method):
    wrapped = _wrapped(method)
    save_pretrained(wrapped, str(tmp_path))
    loaded = from_pretrained(str(tmp_path), engine="megatron")
    assert loaded.ponder_config.method.name == method
    ids = _ids(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, wrapped(ids).logits, rtol=0, atol=0)
