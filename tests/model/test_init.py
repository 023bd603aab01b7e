"""Seed-only initialisation (model/init.py) on one process: megatron-core's distributions,
one generator per parameter name, the process's RNG left alone, every parameter covered."""

import math

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig, output_init_std
from megatron_ponder.model import build_model
from megatron_ponder.model.init import initialize_weights, layout_independent_names

pytestmark = pytest.mark.usefixtures("single_process")
SHAPE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=512)
RESIDUAL_OUTPUTS = ("linear_proj.weight", "linear_fc2.weight")


def _model(arch="llama", seed=0, **ponder):
    return build_model(ModelConfig(arch=arch, **SHAPE), PonderConfig(**ponder), seed=seed)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_weights_follow_the_configured_distributions(arch):
    model_config, ponder = ModelConfig(arch=arch, **SHAPE), PonderConfig(num_latent_thoughts=2)
    model = build_model(model_config, ponder, seed=4)
    std, output_std = model_config.init_method_std, output_init_std(model_config, ponder)
    assert output_std < std
    for name, param in model.named_parameters():
        values = param.detach().double()
        if name.endswith("bias"):
            assert torch.equal(values, torch.zeros_like(values)), name
        elif "layernorm" in name:
            assert torch.equal(values, torch.ones_like(values)), name
        else:
            expected = output_std if name.endswith(RESIDUAL_OUTPUTS) else std
            # Sample std of >= 4096 normal draws: within 5% (well over 3 standard errors).
            assert values.numel() >= 4096, name
            assert values.std().item() == pytest.approx(expected, rel=0.05), name
            assert abs(values.mean().item()) < 4 * expected / math.sqrt(values.numel()), name


def test_same_seed_same_weights_and_each_parameter_has_its_own_draw():
    first, again, other = _model(seed=1), _model(seed=1), _model(seed=2)
    for (name, a), (_, b), (_, c) in zip(first.named_parameters(), again.named_parameters(),
                                         other.named_parameters()):
        assert torch.equal(a, b), name
        if "layernorm" not in name:
            assert not torch.equal(a, c), name
    # Same shape, same distribution, different names: different numbers.
    assert not torch.equal(first.decoder.layers[0].self_attention.linear_qkv.weight,
                           first.decoder.layers[1].self_attention.linear_qkv.weight)
    assert not torch.equal(first.embedding.word_embeddings.weight, first.output_layer.weight)


def test_the_default_seed_is_the_one_torch_was_seeded_with():
    torch.manual_seed(5)
    implicit = build_model(ModelConfig(**SHAPE), PonderConfig())
    explicit = _model(seed=5)
    for (name, a), (_, b) in zip(implicit.named_parameters(), explicit.named_parameters()):
        assert torch.equal(a, b), name


def test_the_process_rng_is_left_alone():
    model = _model()
    torch.manual_seed(9)
    expected = torch.rand(4)
    torch.manual_seed(9)
    initialize_weights(model, seed=3)
    assert torch.equal(torch.rand(4), expected)


def test_global_names_on_one_stage_are_the_local_names():
    model = _model()
    names = layout_independent_names(model)
    assert all(local == global_ for local, global_ in names.items())
    assert "decoder.layers.1.mlp.linear_fc1.weight" in names


def test_pause_embedding_is_covered_and_an_unknown_parameter_is_refused():
    model = _model(num_latent_thoughts=2, ponder_method="pause")
    assert model.pause_embedding.std().item() == pytest.approx(
        model.config.init_method_std, rel=0.25)
    model.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match="no initialisation rule for parameter 'extra'"):
        initialize_weights(model, seed=0)
