"""The Pause and Loop baselines and the truncated-gradient forward, on hand-checkable cases."""

import math

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.model import build_model

pytestmark = pytest.mark.usefixtures("single_process")
VOCAB = 61


def _model(method="ponderlm2", k=1, arch="llama", seed=0, **ponder):
    torch.manual_seed(seed)
    return build_model(
        ModelConfig(arch=arch, num_layers=2, hidden_size=32, num_attention_heads=4,
                    vocab_size=VOCAB),
        PonderConfig(num_latent_thoughts=k, jacobi_iterations=2, ponder_method=method, **ponder))


def _ids(length=5, batch=2, seed=7):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _decoder_calls(model):
    calls = []

    def hook(module, args, kwargs, output):
        calls.append(dict(inputs=kwargs["hidden_states"].detach().clone(),
                          output=output.detach().clone(), grad=torch.is_grad_enabled(),
                          normed=module.final_layernorm is not None))

    return calls, model.decoder.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("k", [1, 3])
def test_pause_interleaves_learned_pause_slots_and_scores_the_last(k):
    model = _model("pause", k=k)
    ids = _ids()
    length, hidden = ids.shape[1], model.config.hidden_size
    calls, handle = _decoder_calls(model)
    logits = model(ids)
    handle.remove()
    assert len(calls) == 1  # one pass over (K+1)L slots
    inputs = calls[0]["inputs"].view(length, k + 1, 2, hidden)
    scale = math.sqrt(hidden)  # sqrt(H), not PonderLM-2's sqrt(2.5 H)
    words = model.embedding.word_embeddings.weight[ids.t()] * scale
    torch.testing.assert_close(inputs[:, 0], words.detach(), rtol=0, atol=1e-6)
    pause = (model.pause_embedding * scale).detach()
    for slot in range(1, k + 1):
        assert torch.equal(inputs[:, slot], pause.expand(length, 2, hidden))
    last_slot = calls[0]["output"].view(length, k + 1, 2, hidden)[:, k]
    torch.testing.assert_close(logits, model.output(last_slot).transpose(0, 1))


def test_pause_is_causal_and_learns_its_embedding():
    model = _model("pause", k=2)
    ids = _ids()
    changed = ids.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % VOCAB
    torch.testing.assert_close(model(ids)[:, :3], model(changed)[:, :3], rtol=0, atol=1e-6)
    model(ids, labels=ids).sum().backward()
    assert model.pause_embedding.grad is not None and model.pause_embedding.grad.abs().sum() > 0


def test_pause_embedding_is_drawn_from_the_seed():
    first, again, other = _model("pause", seed=0), _model("pause", seed=0), _model("pause", seed=1)
    assert torch.equal(first.pause_embedding, again.pause_embedding)
    assert not torch.equal(first.pause_embedding, other.pause_embedding)
    assert not torch.equal(first.pause_embedding, first.embedding.word_embeddings.weight[0])


@pytest.mark.parametrize("k", [1, 2])
def test_loop_chains_the_stack_without_norm_and_normalises_once(k):
    model = _model("loop", k=k, arch="gpt_neox")
    ids = _ids()
    norm_calls = []
    norm = model.decoder.final_layernorm.register_forward_hook(
        lambda module, args, output: norm_calls.append(1))
    calls, handle = _decoder_calls(model)
    logits = model(ids)
    handle.remove()
    norm.remove()
    assert len(calls) == k + 1 and len(norm_calls) == 1
    assert [call["normed"] for call in calls] == [False] * k + [True]
    scale = math.sqrt(2.5 * model.config.hidden_size)
    words = model.embedding.word_embeddings.weight[ids.t()] * scale
    torch.testing.assert_close(calls[0]["inputs"], words.detach(), rtol=0, atol=1e-6)
    for before, after in zip(calls, calls[1:]):
        assert torch.equal(after["inputs"], before["output"])  # raw residual stream fed on
    torch.testing.assert_close(logits, model.output(calls[-1]["output"]).transpose(0, 1))


def test_loop_differs_from_one_pass_and_k0_is_vanilla():
    loop, plain = _model("loop", k=1), _model("ponderlm2", k=0)
    ids = _ids()
    assert not torch.allclose(loop(ids), plain(ids))
    torch.testing.assert_close(loop(ids, num_latent_thoughts=0), plain(ids), rtol=0, atol=0)


@pytest.mark.parametrize("grad_passes", [1, 2, 4])
def test_grad_passes_keep_the_forward_and_build_the_last_passes_only(grad_passes):
    full, truncated = _model(k=1), _model(k=1, ponder_grad_passes=grad_passes)
    ids = _ids()
    calls, handle = _decoder_calls(truncated)
    loss = truncated(ids, labels=ids).sum()
    handle.remove()
    schedule_length = 1 + 2 + 1  # growth, J=2, final
    expected = [index >= schedule_length - grad_passes for index in range(schedule_length)]
    assert [call["grad"] for call in calls] == expected
    full_loss = full(ids, labels=ids).sum()
    torch.testing.assert_close(loss, full_loss, rtol=0, atol=0)
    loss.backward()
    full_loss.backward()
    grads = [p.grad for p in truncated.parameters()]
    full_grads = [p.grad for p in full.parameters()]
    same = all(torch.allclose(a, b) for a, b in zip(grads, full_grads))
    assert same == (grad_passes >= schedule_length)


def test_grad_passes_apply_to_training_only():
    model = _model(k=1, ponder_grad_passes=1).eval()
    calls, handle = _decoder_calls(model)
    model(_ids())
    handle.remove()
    assert all(call["grad"] for call in calls)


def test_warmup_runs_k0_before_the_given_iteration():
    ponder = PonderConfig(num_latent_thoughts=2, ponder_warmup_iters=3)
    assert [ponder.thoughts_at(i) for i in range(5)] == [0, 0, 0, 2, 2]
    assert ponder.thoughts_at(0, training=False) == 2


@pytest.mark.parametrize("bad", [dict(ponder_method="think"), dict(ponder_grad_passes=0),
                                 dict(ponder_warmup_iters=-1)])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError):
        PonderConfig(**bad)
