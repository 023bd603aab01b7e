"""FLOP and parameter accounting for every --ponder-method and the cheaper-training options,
checked against hand counts and against the built model."""

import pytest

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.model import build_model
from megatron_ponder.training.flops import forward_passes, inference_flops_per_token, \
    parameter_count, pass_flops, step_flops

MODEL = ModelConfig(arch="llama", num_layers=2, hidden_size=32, num_attention_heads=4,
                    num_query_groups=2, ffn_hidden_size=64, vocab_size=128)


def test_pass_flops_by_hand():
    # Per slot and layer: qkv 32*8*(4+2*2) + proj 8*4*32 + mlp 3*32*64 = 2048 + 1024 + 6144.
    macs = 2048 + 1024 + 6144
    n = 6 * 2  # 6 tokens, 2 slots
    forward = 2 * (2 * macs * n + 4 * n * n * 4 * 8)
    assert pass_flops(MODEL, 6, 2, with_output=False) == 3 * forward
    assert pass_flops(MODEL, 6, 2, with_output=False, with_backward=False) == forward
    assert pass_flops(MODEL, 6, 2, with_output=True) == 3 * (forward + 2 * 32 * 128 * 6)


@pytest.mark.parametrize("ponder,k,expected", [
    (PonderConfig(num_latent_thoughts=1), 1,
     [(1, False, True), (2, False, True), (2, False, True), (2, False, True), (2, True, True)]),
    (PonderConfig(num_latent_thoughts=1, ponder_grad_passes=2), 1,
     [(1, False, False), (2, False, False), (2, False, False), (2, False, True),
      (2, True, True)]),
    (PonderConfig(num_latent_thoughts=2, ponder_method="pause"), 2, [(3, True, True)]),
    (PonderConfig(num_latent_thoughts=2, ponder_method="loop"), 2,
     [(1, False, True), (1, False, True), (1, True, True)]),
    (PonderConfig(num_latent_thoughts=1), 0, [(1, True, True)]),  # during the K=0 warm-up
])
def test_forward_passes(ponder, k, expected):
    assert forward_passes(ponder, k, 3) == expected


def test_step_flops_follow_the_passes():
    ponder = PonderConfig(num_latent_thoughts=1, ponder_grad_passes=1)
    # K=1, J=1: growth pass, one Jacobi pass, final pass; only the last builds a graph.
    expected = (pass_flops(MODEL, 8, 1, False, False) + pass_flops(MODEL, 8, 2, False, False)
                + pass_flops(MODEL, 8, 2, True, True))
    assert step_flops(MODEL, ponder, 8, 3, [1, 1]) == 2 * 3 * expected
    warm = PonderConfig(num_latent_thoughts=1, ponder_warmup_iters=5)
    assert step_flops(MODEL, warm, 8, 1, [3], num_latent_thoughts=0) == \
        pass_flops(MODEL, 8, 1, True)


def test_inference_flops_per_token():
    vanilla = inference_flops_per_token(MODEL, PonderConfig(num_latent_thoughts=0), 16)
    ponder = inference_flops_per_token(MODEL, PonderConfig(num_latent_thoughts=1), 16)
    loop = inference_flops_per_token(MODEL, PonderConfig(num_latent_thoughts=1,
                                                         ponder_method="loop"), 16)
    output = 2 * 32 * 128
    dense = 2 * (2048 + 1024 + 6144)
    assert vanilla == 2 * (dense + 4 * 8 * 4 * 8) + output
    assert ponder == 2 * 2 * (dense + 4 * 16 * 4 * 8) + output  # K+1 steps, 2x the cache
    assert loop == 2 * 2 * (dense + 4 * 8 * 4 * 8) + output


@pytest.mark.usefixtures("single_process")
@pytest.mark.parametrize("arch,method", [("llama", "ponderlm2"), ("gpt_neox", "ponderlm2"),
                                         ("llama", "pause"), ("gpt_neox", "loop")])
def test_parameter_count_matches_the_model(arch, method):
    model_config = ModelConfig(arch=arch, num_layers=2, hidden_size=32, num_attention_heads=4,
                               vocab_size=128)
    ponder = PonderConfig(num_latent_thoughts=1, ponder_method=method)
    model = build_model(model_config, ponder)
    assert parameter_count(model_config, ponder) == sum(p.numel() for p in model.parameters())
