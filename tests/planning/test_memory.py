"""The memory model by hand: model state per layout, parameters per stage, the activation terms
of small layers (each number derived in the comments), the pipeline schedule's in-flight peak,
and bad input."""

import pytest

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.planning.memory import (
    ActivationSetup, activation_bytes, model_state_bytes, peak_inflight_bytes, schedule_order,
    stage_parameters,
)
from megatron_ponder.training.flops import parameter_count


def test_model_state_bytes_by_hand():
    mixed = model_state_bytes(1000, mixed_precision=True, dp=4, distributed_optimizer=True)
    # bf16 weights 2 B, fp32 gradient buffer 4 B, fp32 master + Adam m, v 12 B split over DP=4
    assert (mixed.weight_bytes, mixed.grad_bytes, mixed.optimizer_bytes) == (2000, 4000, 3000)
    assert mixed.total == 9000
    fp32 = model_state_bytes(1000, mixed_precision=False, dp=4, distributed_optimizer=False)
    assert (fp32.weight_bytes, fp32.grad_bytes, fp32.optimizer_bytes) == (4000, 4000, 8000)


def _neox_small():
    return ModelConfig(arch="gpt_neox", num_layers=2, hidden_size=8, num_attention_heads=2,
                       ffn_hidden_size=32, vocab_size=16)


def test_stage_parameters_by_hand():
    model = _neox_small()
    # One layer: split qkv 8x24 + bias 24, proj 8x8, fc1 8x32 + bias 32, fc2 32x8 = 824;
    # replicated: two LayerNorms (2 x 16) and the proj/fc2 biases (8 + 8) = 48.
    layer = 824 + 48
    assert stage_parameters(model, tp=1, pp=1, stage=0) == 2 * layer + 2 * 16 * 8 + 16
    assert stage_parameters(model, tp=1, pp=1, stage=0) == parameter_count(model) == 2016
    # TP=2 halves the split part, the embedding and the output layer.
    assert stage_parameters(model, tp=2, pp=1, stage=0) == 2 * (412 + 48) + 64 + 64 + 16
    # PP=2: stage 0 has a layer and the embedding, stage 1 a layer, final norm, output layer.
    assert stage_parameters(model, tp=1, pp=2, stage=0) == layer + 128
    assert stage_parameters(model, tp=1, pp=2, stage=1) == layer + 128 + 16


@pytest.mark.parametrize("preset", ["pythia-1.4b", "llama-1.4b", "tiny-llama"])
def test_stage_parameters_add_up_to_the_model(preset):
    from megatron_ponder.training.presets import get_preset

    values = get_preset(preset)
    values.pop("seq_length")
    model = ModelConfig(**values)
    assert stage_parameters(model, 1, 1, 0) == parameter_count(model)
    assert sum(stage_parameters(model, 1, 4, s) for s in range(4)) == parameter_count(model)


def test_one_llama_layer_k0_by_hand():
    # llama, 1 layer, H=64, 4 heads of 16, FFN 256, vocab 256, L=32, micro-batch 2: 64 rows.
    model = ModelConfig(arch="llama", num_layers=1, hidden_size=64, num_attention_heads=4,
                        vocab_size=256)
    setup = ActivationSetup(micro_batch_size=2, seq_length=32)
    rows, row = 64, 64 * 4  # fp32 bytes of one hidden row
    norm = rows * row + rows * 4 + 2 * rows * row   # x, rsqrt, normalised, output
    attention = rows * row * (1 + 1 + 3)            # rotated q and k, the QKV buffer (v)
    rotary = 4 * 32 * 16 * 4                        # cos and sin for q and k, [L, 1, 1, 16]
    core = rows * row + rows * 4 * 4                # output, log-sum-exp per head
    mlp = 5 * rows * 256 * 4                        # fc1 (2 FFN), SiLU, linear half, product
    layer = 2 * norm + attention + rotary + core + mlp
    final_norm = norm
    loss = 64 * 256 * 4 + 64 * (1 + 8) + 64 * 4     # softmax, target mask/ids, loss mask
    ids = 64 * 8
    expected = layer + final_norm + loss + ids
    got = activation_bytes(model, PonderConfig(num_latent_thoughts=0), setup, 0)
    assert got.total == got.kept_bytes == expected == 650304


def test_passes_add_up_and_grad_passes_drop_the_early_ones():
    model = ModelConfig(arch="gpt_neox", num_layers=1, hidden_size=64, num_attention_heads=4,
                        vocab_size=256)
    setup = ActivationSetup(micro_batch_size=2, seq_length=32)
    k1 = activation_bytes(model, PonderConfig(num_latent_thoughts=1), setup, 0).total
    # Pass 0 (64 rows): ln x 16384 + 4 x 256 stats + 2 outputs 32768, rotary 4 x 512 (4 of 16
    # channels), q/k/QKV 81920, out 16384 + lse 1024, GeLU MLP 2 x 65536; final norm without
    # output 16384 + 512. Pass 1 (128 rows): all doubled, final norm with output; plus the loss.
    pass0 = 16384 + 1024 + 32768 + 2048 + 81920 + 17408 + 131072 + 16896
    pass1 = 2 * (16384 + 1024 + 32768 + 2048 + 81920 + 17408 + 131072 + 16896) + 32768
    assert k1 == pass0 + pass1 + 65536 + 576 + 256 + 512
    last_only = activation_bytes(
        model, PonderConfig(num_latent_thoughts=1, ponder_grad_passes=1), setup, 0).total
    assert last_only == pass1 + 65536 + 576 + 256 + 512


def test_recompute_keeps_less():
    model = ModelConfig(arch="llama", num_layers=4, hidden_size=64, num_attention_heads=4,
                        vocab_size=256)
    ponder = PonderConfig(num_latent_thoughts=1)
    sizes = {r: activation_bytes(model, ponder, ActivationSetup(2, 32, recompute=r), 2)
             for r in ("none", "selective", "full")}
    assert sizes["full"].kept_bytes < sizes["selective"].kept_bytes < sizes["none"].kept_bytes
    assert sizes["full"].transient_bytes > 0 == sizes["none"].transient_bytes


def test_pipeline_schedule_peak_by_hand():
    # P=2, M=2, V=2 passes of 1 and 10 bytes. Stage 0 warms up (2-0-1)*2 + (2-1)*2 = 4 units:
    # everything, so the peak is the sum. Stage 1 warms up 2 units (pass 0 of both
    # micro-batches), then F(0, pass 1) B(0, pass 1) F(1, pass 1) B(1, pass 1): 1+1+10.
    assert peak_inflight_bytes([1, 10], 2, 2, 0) == 22
    assert peak_inflight_bytes([1, 10], 2, 2, 1) == 12
    assert peak_inflight_bytes([1, 10], 2, 1, 0) == 11  # one stage: one micro-batch at a time
    order = schedule_order(2, 2, 2, 1)
    assert order == [("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("B", 0, 1), ("F", 1, 1),
                     ("B", 1, 1), ("B", 0, 0), ("B", 1, 0)]


def test_bad_input_is_one_line_error():
    with pytest.raises(ValueError, match="unknown recompute setting"):
        ActivationSetup(2, 32, recompute="sometimes")
    with pytest.raises(ValueError, match="attention kind"):
        ActivationSetup(2, 32, attention="sparse")
    model = ModelConfig(num_layers=3)
    with pytest.raises(ValueError, match="not divisible by the pipeline size 2"):
        activation_bytes(model, PonderConfig(), ActivationSetup(1, 8), 1, pipeline_size=2)
