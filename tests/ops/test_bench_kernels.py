"""tools/bench_kernels.py runs on CPU and writes the JSON the docs are built from."""

import importlib.util
import json
import os

import pytest
import torch

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench_kernels.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_table_and_json(bench, tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["--shapes", "64x2x48x2", "--variant", "both", "--iters", "2", "--warmup", "0",
            "--device", "cpu", "--json", str(path)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipped backend triton" in printed and "skipped backend cuda" in printed
    report = json.loads(path.read_text())
    assert report["copy_bandwidth_gbps"] > 0
    assert set(report["skipped"]) == {"triton", "cuda"}
    rows = report["rows"]
    assert {(r["variant"], r["direction"]) for r in rows} == {
        (v, d) for v in ("jacobi", "growth") for d in ("forward", "backward")}
    plane = 64 * 2 * 48 * torch.bfloat16.itemsize
    for r in rows:
        assert r["backend"] == "torch" and r["exact"] and r["ms"] > 0
        assert r["speedup_vs_torch"] == 1.0
        slots, prev_slots = 3, 3 if r["variant"] == "jacobi" else 2
        expected = 2 * slots * plane if r["direction"] == "forward" else (
            slots - 1 + prev_slots) * plane
        assert r["bytes"] == expected
        assert r["gbps"] == pytest.approx(expected / (r["ms"] * 1e-3) / 1e9)


def test_rejects_bad_shape_and_backend(bench):
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "64x2x48", "--device", "cpu"])
    with pytest.raises(SystemExit):
        bench.main(["--backends", "triton", "--device", "cpu"])
