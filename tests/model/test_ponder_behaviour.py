"""Behaviour of the PonderLM-2 forward: pass schedule, positions, loss slots, gradient flow,
J draws, and the paper's initialisation."""

import math

import pytest
import torch

import megatron_ponder.model.ponder as ponder_module
from megatron_ponder.config import ModelConfig, PonderConfig, output_init_std
from megatron_ponder.methods import PONDERLM2
from megatron_ponder.model import build_model, draw_jacobi_iterations
from megatron_ponder.model.rotary import RotaryAngles

pytestmark = pytest.mark.usefixtures("single_process")
VOCAB = 61


def _model(arch="llama", k=1, j=3, seed=0, **model_kwargs):
    torch.manual_seed(seed)
    kwargs = dict(arch=arch, num_layers=2, hidden_size=32, num_attention_heads=4,
                  vocab_size=VOCAB)
    kwargs.update(model_kwargs)
    return build_model(ModelConfig(**kwargs),
                       PonderConfig(num_latent_thoughts=k, jacobi_iterations=j))


def _ids(length=5, batch=2):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(7))


def _record_decoder_calls(model):
    """Collect (input rows, rotary angles, output) of every pass through the decoder."""
    calls = []

    def hook(module, args, kwargs, output):
        output.retain_grad()
        calls.append((kwargs["hidden_states"].shape[0], kwargs["rotary_pos_emb"], output))

    return calls, model.decoder.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("k,j,expected", [
    (1, 3, [1, 2, 2, 2, 2]), (2, 3, [1, 2, 3, 3, 3, 3]), (0, 3, [1]), (3, 0, [1, 2, 3, 4]),
])
def test_pass_lengths(k, j, expected):
    length = 5
    assert list(PONDERLM2.plan(k, j).slots) == expected
    model = _model(k=k, j=j)
    calls, handle = _record_decoder_calls(model)
    model(_ids(length))
    handle.remove()
    assert [rows for rows, _, _ in calls] == [length * s for s in expected]


def test_every_slot_of_a_token_sits_at_its_position():
    model = _model(k=2, j=1)
    calls, handle = _record_decoder_calls(model)
    model(_ids(4))
    handle.remove()
    rotary = RotaryAngles(model.config.kv_channels)
    for rows, angles, _ in calls:
        slots = rows // 4
        expected_positions = torch.tensor([t for t in range(4) for _ in range(slots)])
        torch.testing.assert_close(angles, rotary(expected_positions), atol=0, rtol=0)
        per_token = angles.view(4, slots, -1)
        assert torch.equal(per_token, per_token[:, :1].expand_as(per_token))


@pytest.mark.parametrize("k", [1, 2])
def test_only_slot_k_reaches_the_loss(k):
    model = _model(k=k, j=2)
    calls, handle = _record_decoder_calls(model)
    ids = _ids(6)
    model(ids, labels=ids).mean().backward()
    handle.remove()
    final_output = calls[-1][2]
    grad = final_output.grad.view(6, k + 1, 2, -1)
    assert grad[:, k].abs().sum() > 0
    assert torch.count_nonzero(grad[:, :k]) == 0


def test_gradients_flow_through_earlier_passes(monkeypatch):
    ids = _ids(6)

    def grads(model):
        model(ids, labels=ids).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    model = _model(k=1, j=2)
    calls, handle = _record_decoder_calls(model)
    full = grads(model)
    handle.remove()
    for rows, _, output in calls[:-1]:  # every earlier pass's output receives gradient
        assert output.grad is not None and output.grad.abs().sum() > 0

    real_splice = ponder_module.splice
    monkeypatch.setattr(ponder_module, "splice",
                        lambda emb, prev, slots: real_splice(emb, prev.detach(), slots))
    detached = grads(_model(k=1, j=2))
    differing = {n for n in full if not torch.allclose(full[n], detached[n], atol=1e-7)}
    # The output layer only sees the final pass's (numerically identical) output; every
    # parameter behind it gets gradient through the fed-back thoughts as well.
    assert differing == set(full) - {"output_layer.weight"}


def test_jacobi_draw_is_a_function_of_seed_iteration_microbatch():
    choices = (2, 3, 4)
    first = [draw_jacobi_iterations(choices, 1234, it, mb) for it in range(50) for mb in range(4)]
    again = [draw_jacobi_iterations(choices, 1234, it, mb) for it in range(50) for mb in range(4)]
    other_seed = [draw_jacobi_iterations(choices, 99, it, mb) for it in range(50) for mb in range(4)]
    assert first == again
    assert first != other_seed
    assert set(first) == set(choices)
    # Roughly uniform over 200 draws.
    assert all(abs(first.count(c) / len(first) - 1 / 3) < 0.12 for c in choices)
    with pytest.raises(ValueError):
        draw_jacobi_iterations((), 0, 0, 0)


def test_forward_jacobi_argument_overrides_config():
    model = _model(k=1, j=3)
    calls, handle = _record_decoder_calls(model)
    model(_ids(), jacobi_iterations=1)
    handle.remove()
    assert len(calls) == 1 + 1 + 1  # growth, one Jacobi pass, final


def test_vanilla_has_one_unscaled_pass():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=4,
                                    vocab_size=VOCAB),
                        PonderConfig(num_latent_thoughts=2, vanilla=True))
    calls, handle = _record_decoder_calls(model)
    ids = _ids()
    model(ids)
    handle.remove()
    assert len(calls) == 1 and model.embedding_scale == 1.0
    assert _model(k=1).embedding_scale == pytest.approx(math.sqrt(2.5 * 32))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_paper_initialisation(arch):
    hidden, layers, k = 256, 4, 1
    model = _model(arch=arch, k=k, hidden_size=hidden, num_layers=layers, num_attention_heads=4)
    std = math.sqrt(2 / (5 * hidden))
    params = dict(model.named_parameters())
    assert params["embedding.word_embeddings.weight"].std().item() == pytest.approx(std, rel=0.05)
    assert params["decoder.layers.0.mlp.linear_fc1.weight"].std().item() == pytest.approx(
        std, rel=0.05)
    expected_out = std / math.sqrt(2 * layers * ((k + 1) if arch == "gpt_neox" else 1))
    for name in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight"):
        assert params[f"decoder.layers.1.{name}"].std().item() == pytest.approx(
            expected_out, rel=0.05)
    assert output_init_std(ModelConfig(arch=arch, num_layers=layers, hidden_size=hidden),
                           PonderConfig(num_latent_thoughts=k)) == pytest.approx(expected_out)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig(arch="mamba")
    with pytest.raises(ValueError, match="not divisible by num_query_groups"):
        ModelConfig(num_attention_heads=4, num_query_groups=3)
    with pytest.raises(ValueError, match="num_latent_thoughts"):
        PonderConfig(num_latent_thoughts=-1)
    with pytest.raises(ValueError, match="parallel_residual"):
        ModelConfig(arch="llama", parallel_residual=True)
