"""The communication model by hand: ring conventions, the collectives of one step for small
layouts (each count derived in the comments), pipeline sends, the gradient buffer's padding,
the expected number of chunks, and bad input."""

import pytest

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.planning.communication import (
    CommSetup, gradient_buffer_elements, pipeline_sends, sent_by_kind,
    sent_fraction, step_collectives,
)
from megatron_ponder.parallel.chunk_plan import expected_max
from megatron_ponder.planning.memory import stage_parameters


def _llama():  # the byte check's model: 2 layers, H=64, 4 heads, FFN 256, vocab 1024 padded
    return ModelConfig(arch="llama", num_layers=2, hidden_size=64, num_attention_heads=4,
                       vocab_size=1024)


def _setup(**overrides):
    values = dict(model=_llama(), ponder=PonderConfig(num_latent_thoughts=1, jacobi_iterations=2),
                  seq_length=32, micro_batch_size=2, num_microbatches=2, tp=2,
                  activation_bytes=4, param_bytes=4)
    values.update(overrides)
    return CommSetup(**values)


def test_ring_fractions():
    assert sent_fraction("all_gather", 4) == sent_fraction("reduce_scatter", 4) == 0.75
    assert sent_fraction("all_reduce", 4) == 1.5
    assert sent_fraction("send", 2) == 1.0 and sent_fraction("all_reduce", 1) == 0.0
    with pytest.raises(ValueError, match="unknown operation"):
        sent_fraction("all_to_all", 2)


def test_tensor_parallel_with_sequence_parallelism_by_hand():
    # K=1, J=2: passes of 1, 2, 2, 2 slots (7 slots). Per layer and pass 6 all-gathers (2
    # forward, 2 re-gathers and 2 row-parallel output gradients backward) and 4 reduce-scatters;
    # plus the embedding (1 + 1) and the output layer (2 gathers, 1 scatter) per micro-batch.
    collectives = step_collectives(_setup(), jacobi_per_microbatch=[2, 2])
    calls = sent_by_kind(collectives, "calls")
    assert calls[("tp", "all_gather")] == 2 * (2 * 4 * 6 + 1 + 2) == 102
    assert calls[("tp", "reduce_scatter")] == 2 * (2 * 4 * 4 + 1 + 1) == 68
    # 3 cross-entropy all-reduces per micro-batch and the norms' gradients once.
    assert calls[("tp", "all_reduce")] == 2 * 3 + 1
    # Payload of a layer's gather: 64 rows per slot x H 64 x 4 bytes = 16 KiB per slot.
    payload = sent_by_kind(collectives, "payload_bytes")
    layers = 2 * 2 * 6 * 7 * 16384  # micro-batches x layers x gathers x slots x bytes
    extra = 2 * 3 * 16384           # embedding and output layer: 1 slot each
    assert payload[("tp", "all_gather")] == layers + extra
    # Norm gradients: 5 RMSNorm weights of 64 (2 per layer + final), fp32.
    assert payload[("tp", "all_reduce")] == 2 * 3 * 64 * 4 + 5 * 64 * 4
    sent = sent_by_kind(collectives)
    assert sent[("tp", "all_gather")] == (layers + extra) / 2  # (n-1)/n with n = 2


def test_recompute_and_no_sequence_parallelism():
    full = sent_by_kind(step_collectives(_setup(recompute="full"),
                                        jacobi_per_microbatch=[2, 2]), "calls")
    # Full recomputation repeats each layer's forward gathers and scatters: 2 + 2 per pass.
    assert full[("tp", "all_gather")] == 102 + 2 * 2 * 4 * 2
    assert full[("tp", "reduce_scatter")] == 68 + 2 * 2 * 4 * 2
    plain = sent_by_kind(step_collectives(_setup(sequence_parallel=False),
                                          jacobi_per_microbatch=[2, 2]), "calls")
    # 2 forward + 2 backward all-reduces per layer and pass, embedding forward, output layer
    # backward, 3 for the loss; no norm-gradient all-reduce.
    assert plain == {("tp", "all_reduce"): 2 * (2 * 4 * 4 + 1 + 1 + 3),
                     ("world", "all_reduce"): 2}


def test_grad_passes_run_forward_only():
    ponder = PonderConfig(num_latent_thoughts=1, jacobi_iterations=2, ponder_grad_passes=1)
    calls = sent_by_kind(step_collectives(_setup(ponder=ponder, num_microbatches=1),
                                          jacobi_per_microbatch=[2]), "calls")
    # Three passes forward only (2 gathers each per layer), the final pass 6; + 1 + 2.
    assert calls[("tp", "all_gather")] == 2 * (3 * 2 + 6) + 1 + 2


def test_pipeline_sends_by_hand():
    # PP=2, M=4, K=1, J=2: 4 chunks, 16 units per stage. Stage 0 sends every forward and all
    # but pass 0's gradients (16 + 12); the last stage all but the final pass forward (12 + 16).
    # Messages: (K+1) L b rows = 128, /TP 2 under SP, x H 64 x 4 bytes.
    for stage in (0, 1):
        setup = _setup(pp=2, model=ModelConfig(arch="llama", num_layers=4, hidden_size=64,
                                               num_attention_heads=4, vocab_size=1024),
                       num_microbatches=4, stage=stage)
        assert pipeline_sends(setup, 4) == (28, 64 * 64 * 4)
    # K=0 is plain 1F1B: one chunk; stage 0 sends forward only.
    setup = _setup(pp=2, tp=1, num_microbatches=4, ponder=PonderConfig(num_latent_thoughts=0))
    assert pipeline_sends(setup, 1) == (4, 64 * 64 * 4)


def test_data_parallel_buffer_and_optimizer():
    setup = _setup(tp=1, dp=3)
    params = stage_parameters(setup.model, 1, 1, 0, setup.ponder)
    # The distributed optimizer pads the buffer to a multiple of lcm(3, 128) = 384.
    assert gradient_buffer_elements(setup) == -(-params // 384) * 384
    sent = sent_by_kind(step_collectives(setup, jacobi_per_microbatch=[2, 2]))
    elements = gradient_buffer_elements(setup)
    assert sent[("dp", "reduce_scatter")] == pytest.approx(elements * 4 * 2 / 3)
    assert sent[("dp", "all_gather")] == pytest.approx(elements * 4 * 2 / 3)
    plain = _setup(tp=1, dp=3, distributed_optimizer=False)
    sent = sent_by_kind(step_collectives(plain, jacobi_per_microbatch=[2, 2]))
    # All-reduce of the unpadded buffer, plus the token count and the loss (4 + 16 bytes).
    assert sent[("dp", "all_reduce")] == pytest.approx((params * 4 + 20) * 2 * 2 / 3)


def test_expected_chunks_and_plan_averages():
    assert expected_max([2, 3, 4], 1) == pytest.approx(3)
    # P(max <= 2) = 1/9, P(max <= 3) = 4/9: 2/9 + 3 x 3/9 + 4 x 5/9 = 31/9.
    assert expected_max([2, 3, 4], 2) == pytest.approx(31 / 9)
    drawn = sent_by_kind(step_collectives(_setup(), jacobi_choices=[2, 3]))
    fixed = [sent_by_kind(step_collectives(_setup(), jacobi_per_microbatch=[j, j]))
             for j in (2, 3)]
    key = ("tp", "all_gather")
    assert drawn[key] == pytest.approx((fixed[0][key] + fixed[1][key]) / 2)


def test_bad_input():
    with pytest.raises(ValueError, match="give jacobi_per_microbatch or jacobi_choices"):
        step_collectives(_setup())
    with pytest.raises(ValueError, match="1 J values for 2 micro-batches"):
        step_collectives(_setup(), jacobi_per_microbatch=[2])
    with pytest.raises(ValueError, match="not divisible by the pipeline size 3"):
        step_collectives(_setup(pp=3), jacobi_per_microbatch=[2, 2])
