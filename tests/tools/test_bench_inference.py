"""tools/bench_inference.py in a tiny configuration: the JSON it writes, and its refusal to time
a model that disagrees with the training model."""

import json

import pytest
import torch

from tests.tools.conftest import load_tool

pytest.importorskip("transformers")
pytestmark = [pytest.mark.usefixtures("single_process"), pytest.mark.filterwarnings("ignore")]
# One torch thread: quick on a loaded machine too (the tool sets the process's thread count;
# the fixture below puts it back).
TINY = ["--size", "tiny", "--batch", "2", "--prompt-length", "6", "--new-tokens", "3",
        "--score-length", "8", "--warmup", "0", "--threads", "1"]


@pytest.fixture(autouse=True)
def torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(tool, tmp_path, *extra):
    output = tmp_path / "bench.json"
    status = tool.main(TINY + ["--output", str(output), *extra])
    with open(output) as f:
        return status, json.load(f)


def test_tiny_run_writes_the_report(tmp_path, capsys):
    tool = load_tool("bench_inference")
    status, report = _run(tool, tmp_path, "--thoughts", "0", "1", "--repeats", "2")
    assert status == 0 and report["passed"] is True
    assert report["command"].startswith("tools/bench_inference.py --size tiny")
    assert len(report["commit"] or "") in (0, 40)
    assert {"torch", "transformers", "cpu_count", "torch_threads", "processor"} <= set(
        report["machine"])
    assert report["machine"]["torch"] == torch.__version__
    assert [len(report["load_average"][end]) for end in ("start", "end")] == [3, 3]
    assert report["model"] == dict(tool.SIZES["tiny"], arch="llama")
    assert report["settings"]["jacobi_iterations"] == 3
    assert [(r["K"], r["J"]) for r in report["results"]] == [(0, 0), (1, 3)]
    for result in report["results"]:
        check = result["check"]
        assert check["passed"] and check["greedy_tokens_equal"]
        assert check["greedy_tokens_compared"] == 2 * tool.CHECK_NEW_TOKENS
        # Jacobi converged for the greedy check: K * (8 prompt + 4 new tokens) + 1.
        assert check["greedy_check_jacobi_iterations"] == (13 if result["K"] else 0)
        assert check["max_abs_logit_diff"] <= check["atol"] == 1e-4
        assert check["abs_loss_diff"] <= 1e-4
        timings = result["timings"]
        times = timings["times_s"]
        for summary in ("wall", "cpu", "wall_best"):
            assert timings[summary]["prefill_tokens_per_s"] > 0
            assert timings[summary]["score_tokens_per_s"] > 0
            assert timings[summary]["prefill_s"] == pytest.approx(
                2 * 6 / timings[summary]["prefill_tokens_per_s"])
        for clock in ("wall", "cpu"):
            assert all(len(times[clock][m]) == 2 for m in ("prefill", "generate", "score"))
        assert timings["wall_best"]["score_s"] == min(times["wall"]["score"])
        assert timings["wall_best"]["decode_s"] == pytest.approx(
            min(times["wall"]["generate"]) - min(times["wall"]["prefill"]))
    out = capsys.readouterr().out
    assert all(table in out for table in ("tokens per s (median", "tokens per CPU s",
                                          "tokens per s (fastest"))


@pytest.mark.parametrize("broken", ["logits", "tokens", "model"])
def test_a_model_that_disagrees_is_not_timed(tmp_path, monkeypatch, capsys, broken):
    tool = load_tool("bench_inference")
    if broken == "logits":
        score = tool.NativeModel.score

        def off_score(self, ids):
            logits, loss = score(self, ids)
            return logits + 1e-3, loss

        monkeypatch.setattr(tool.NativeModel, "score", off_score)
    elif broken == "tokens":
        generate = tool.NativeModel.generate

        def off_generate(self, ids, mask, new_tokens, **jacobi):
            tokens = generate(self, ids, mask, new_tokens, **jacobi).clone()
            tokens[0, -1] = (tokens[0, -1] + 1) % tool.SIZES["tiny"]["vocab_size"]
            return tokens

        monkeypatch.setattr(tool.NativeModel, "generate", off_generate)
    else:  # the right weights run with another number of Jacobi passes than the training's
        load = tool.from_pretrained
        monkeypatch.setattr(tool, "from_pretrained",
                            lambda folder: load(folder, jacobi_iterations=1))
    status, report = _run(tool, tmp_path, "--thoughts", "1", "--repeats", "1")
    assert status == 1 and report["passed"] is False
    (result,) = report["results"]
    assert "timings" not in result and not result["check"]["passed"]
    assert result["check"]["greedy_tokens_equal"] is (broken != "tokens")
    if broken != "tokens":
        assert result["check"]["max_abs_logit_diff"] > 1e-4
    out = capsys.readouterr().out
    assert "MISMATCH with the training model" in out and "not timed" in out


def test_bad_arguments():
    tool = load_tool("bench_inference")
    for argv in (["--new-tokens", "1"], ["--batch", "0"], ["--thoughts", "-1"],
                 ["--size", "huge"]):
        with pytest.raises(SystemExit):
            tool.main(argv)
