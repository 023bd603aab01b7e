"""``--validate`` bytes: the counter sees every process-group call whatever alias issued it, and
the communication model matches the bytes a real CPU training step sends. Quick: the counter on
two plain gloo ranks and one tensor-parallel case; slow: every case."""

import pytest

from megatron_ponder.planning.communication_measured import (
    BYTE_CASES, ByteLine, select_byte_cases, validate_bytes,
)
from tests.distributed import run_ranks
from tests.planning.byte_ranks import count_plain_collectives


def test_counter_sees_every_call_kind():
    sender, receiver = run_ranks(count_plain_collectives, 2, timeout=300)
    common = {"world/all_reduce/2": (1, 40), "world/all_gather/2": (1, 64),
              "world/reduce_scatter/2": (1, 32), "world/broadcast/2": (1, 24)}
    assert sender == {**common, "pp/send/2": (1, 20)}
    assert receiver == common  # received messages are the sender's


def test_line_reports_the_ratio():
    line = ByteLine("TP2 K=1", None, "tp", "all_gather", 102, 102, 2048.0, 1024.0)
    assert line.ratio == 2.0 and line.text().endswith("ratio 2.000")
    assert ByteLine("x", 0, "pp", "send", 0, 1, 0.0, 10.0).ratio == 0.0
    assert ByteLine("x", 0, "pp", "send", 1, 0, 10.0, 0.0).ratio == float("inf")


def test_tensor_parallel_step_matches_the_model():
    lines = validate_bytes(select_byte_cases(["TP2 K=1"]), printer=lambda _: None)
    kinds = {(line.group, line.operation) for line in lines}
    assert {("tp", "all_gather"), ("tp", "reduce_scatter"), ("tp", "all_reduce")} <= kinds
    for line in lines:
        assert line.modelled_calls == line.measured_calls, line.text()
        assert 0.95 <= line.ratio <= 1.05, line.text()


@pytest.mark.slow
def test_every_case_within_five_percent():
    lines = validate_bytes(BYTE_CASES, printer=lambda _: None)
    assert {line.case for line in lines} == {case.name for case in BYTE_CASES}
    assert all(0.95 <= line.ratio <= 1.05 for line in lines), [l.text() for l in lines]
