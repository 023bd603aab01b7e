"""``--validate``: the activation estimate against the bytes autograd keeps for backward,
measured on CPU. Quick: two single-process cases (K=0 and K=1, no recomputation) and the meter
itself; slow: every case, TP=2 and PP=2 included."""

import pytest
import torch

from megatron_ponder.planning.memory_measured import (
    MEMORY_CASES, SavedTensorMeter, select_memory_cases, validate_memory,
)


def test_meter_counts_unique_storages_while_alive():
    weight = torch.randn(4, 4, requires_grad=True)
    meter = SavedTensorMeter({weight.untyped_storage().data_ptr()})
    with meter.hooks():
        x = torch.randn(8, 4, requires_grad=True)
        y = x @ weight                       # keeps x (128 B); the weight is excluded
        z = (y * y).sum() + (y[:4] * 2).sum()  # y kept twice by one mul: once (128 B)
    assert meter.peak == meter.live == 128 + 128
    z.backward()
    del y, z
    assert meter.live == 0 and meter.peak == 256


@pytest.mark.parametrize("name", ["llama K=0", "llama K=1 J=2"])
def test_single_process_lines(name):
    lines = []
    (line,) = validate_memory(select_memory_cases([name]), printer=lines.append)
    assert lines == [line.text()] and lines[0].startswith(name)
    assert lines[0].endswith(f"ratio {line.ratio:.3f}")
    assert 0.9 <= line.ratio <= 1.1, lines[0]


@pytest.mark.slow
def test_every_case_within_ten_percent():
    lines = validate_memory(MEMORY_CASES, printer=lambda _: None)
    assert len(lines) == len(MEMORY_CASES) + 1  # PP=2 prints one line per stage
    assert all(0.9 <= line.ratio <= 1.1 for line in lines), [line.text() for line in lines]


def test_unknown_case_is_refused():
    with pytest.raises(ValueError, match="unknown validation case"):
        select_memory_cases(["llama K=9"])
