"""tools/bench_train.py with a tiny model and one step per variant: the table and JSON fields
(timings are not asserted)."""

import json

import pytest

from megatron_ponder.training.benchmark import main

FLAGS = ["--model-arch", "llama", "--num-layers", "1", "--hidden-size", "32",
         "--num-attention-heads", "2", "--seq-length", "16", "--micro-batch-size", "1",
         "--global-batch-size", "1"]


def test_bench_train_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(FLAGS + ["--steps", "1", "--warmup-steps", "0", "--variants", "0:0", "1:2",
                         "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| model | tokens/s | ms/step | TFLOP/s | MFU |" in out
    assert "| vanilla |" in out and "| PonderLM-2 K=1 J=2 |" in out
    data = json.loads(path.read_text())
    vanilla, ponder = data["results"]
    assert vanilla["step_ratio"] == 1.0 and vanilla["flop_ratio"] == 1.0
    # K=1, J=2: passes of L, 2L, 2L, 2L slots (7 L of layer work) against one pass of L, the
    # output layer once in both: about 3.95x for this model (by hand from training/flops.py).
    assert 3.5 < ponder["flop_ratio"] < 4.5
    for result in data["results"]:
        assert result["ms_per_step"] > 0 and result["tokens_per_s"] > 0 and result["tflops"] > 0
        assert result["mfu"] is None  # no known peak on CPU
        assert result["memory_kind"] in ("cpu peak RSS growth", "cuda max allocated")
        assert result["steps"] == 1 and len(result["step_ms"]) == 1


def test_bad_variant_is_one_line_error(capsys):
    with pytest.raises(SystemExit):
        main(FLAGS + ["--variants", "1-2"])
    assert "a variant is K:J" in capsys.readouterr().err
