"""The step-time model by hand: wave fill and the memory-bound limit of one matmul, where
collectives run (placement on nodes) and what they cost, what overlaps; and the published
throughput check (Megatron-LM SC21 Table 1)."""

import pytest

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.planning.communication import Collective, CommSetup
from megatron_ponder.planning.hardware import GPU_SPECS, Interconnect, interconnect
from megatron_ponder.planning.published import (
    MEGATRON_SC21_TABLE1, median_absolute_error, model_flops_check, paper_iteration_flops,
    validate_throughput,
)
from megatron_ponder.planning.timing import (
    Hardware, collective_seconds, matmul_seconds, stage_step_time, wave_fill,
)

H100 = Hardware(GPU_SPECS["h100"], Interconnect(8, 360.0, 40.0, 10.0, 20.0), 0.5)


def test_wave_fill_by_hand():
    # [4096, 256] has 32 x 2 = 64 tiles of 128 x 128: one wave on 132 SMs, 64 of them busy.
    assert wave_fill(4096, 256, 132) == pytest.approx(64 / 132)
    # [4096, 6144]: 32 x 48 = 1536 tiles, 12 waves of 132.
    assert wave_fill(4096, 6144, 132) == pytest.approx(1536 / (12 * 132))


def test_matmul_seconds_by_hand():
    # Compute bound: 2 m k n / (989e12 x 0.5 x fill).
    m, k, n = 4096, 2048, 6144
    assert matmul_seconds(m, k, n, H100, 2) == pytest.approx(
        2 * m * k * n / (989e12 * 0.5 * wave_fill(m, n, 132)))
    # Split-K (weight gradients) keeps the GPU full.
    assert matmul_seconds(k, m, n, H100, 2, split_k=True) == pytest.approx(
        2 * m * k * n / (989e12 * 0.5))
    # Memory bound: k = 8 gives 2 x 8 FLOPs per 2 (8 + 8 n/m + n) bytes; reads dominate.
    m, k, n = 4096, 8, 4096
    assert matmul_seconds(m, k, n, H100, 2) == pytest.approx(2 * (m * k + k * n + m * n)
                                                             / 3.35e12)


def _setup(**overrides):
    values = dict(model=ModelConfig(arch="llama", num_layers=4, hidden_size=1024,
                                    num_attention_heads=8, vocab_size=32768),
                  ponder=PonderConfig(num_latent_thoughts=1, jacobi_iterations=2),
                  seq_length=1024, micro_batch_size=1, num_microbatches=4)
    values.update(overrides)
    return CommSetup(**values)


def test_collective_placement_and_cost():
    link = Interconnect(8, 360.0, 40.0, 10.0, 20.0)
    gather = Collective("tp", "all_gather", 8, 2, 8e9)
    # TP 8 fits a node: NVLink. 2 calls x 10 us + 7/8 x 8e9 bytes / 360 GB/s.
    assert collective_seconds(gather, _setup(tp=8), link) == pytest.approx(
        2e-5 + 7e9 / 360e9)
    # DP 16 over TP 2: 32 ranks on 4 nodes, 4 group members per node: 4 x 40 GB/s.
    reduce = Collective("dp", "reduce_scatter", 16, 1, 16e9)
    assert collective_seconds(reduce, _setup(tp=2, dp=16), link) == pytest.approx(
        2e-5 + 15e9 / 160e9)
    # A pipeline message between nodes: one GPU's adapter.
    send = Collective("pp", "send", 2, 1, 4e9)
    assert collective_seconds(send, _setup(tp=8, pp=2), link) == pytest.approx(2e-5 + 4e9 / 40e9)
    assert collective_seconds(Collective("dp", "all_reduce", 1, 5, 1e9), _setup(), link) == 0


def test_tensor_parallelism_costs_ponder_more_than_vanilla():
    times = {}
    for k in (0, 1):
        setup = _setup(tp=8, ponder=PonderConfig(num_latent_thoughts=k, jacobi_iterations=2))
        times[k] = stage_step_time(setup, [2], H100, 0.0)
        assert times[k].tensor_parallel > 0 and times[k].pipeline == 0
    # K=1, J=2 runs passes of 1, 2, 2, 2 slots through every layer's collectives: 4x vanilla's
    # calls (their latency) and 7x its bytes; the time lies between.
    assert 4 < times[1].tensor_parallel / times[0].tensor_parallel < 7


def test_overlap_hides_gradient_reduction():
    plain = stage_step_time(_setup(dp=64), [2], H100, 0.0)
    overlapped = stage_step_time(_setup(dp=64, overlap_grad_reduce=True), [2], H100, 0.0)
    assert 0 < overlapped.gradients < plain.gradients
    assert overlapped.compute == plain.compute


def test_interconnect_flags():
    assert interconnect("a100").network_gbs == 20.0
    assert interconnect("h100", gpus_per_node=4).gpus_per_node == 4
    with pytest.raises(ValueError, match="--nvlink-bandwidth-gbs must be > 0"):
        interconnect("h100", nvlink_gbs=0)
    with pytest.raises(ValueError, match="--network-latency-us must be >= 0"):
        interconnect("h100", network_latency_us=-1)


def test_published_table_flops_and_error():
    # The paper's FLOPs (equation 3) equal this project's count with full recomputation.
    for run in MEGATRON_SC21_TABLE1:
        assert model_flops_check(run) == pytest.approx(1.0, abs=2e-3)
    run = MEGATRON_SC21_TABLE1[-1]
    assert (run.gpus, run.tp, run.pp, run.dp) == (3072, 8, 64, 6)
    assert run.tflops_per_gpu * run.gpus / 1e3 == pytest.approx(502, rel=0.01)  # PFLOP/s
    lines = validate_throughput(0.5, printer=lambda _: None)
    assert len(lines) == 10 and all(line.predicted_tflops > 0 for line in lines)
    assert median_absolute_error(lines) <= 0.15
