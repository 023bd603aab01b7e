"""--check-for-nan-in-loss-and-grad and --max-consecutive-nan-steps on 2 gloo ranks: NaN/inf
injected on one rank is found on every rank, the step is skipped (no optimizer or learning-rate
update), logged and counted, and too many in a row stop the run with one clear message."""

import re

from tests.distributed import run_ranks
from tests.training.runs import pretrain_with_nan
from tests.training.test_pretrain import FLAGS


def _log_lines(text):
    """{iteration: log line} of the Megatron-style training log lines."""
    return {int(m.group(1)): line for line in text.splitlines()
            for m in [re.search(r"iteration\s+(\d+)/", line)] if m}


def _field(line, name):
    return re.search(re.escape(name) + r": ([^|]+)\|", line).group(1).strip()


def test_nan_on_one_rank_skips_the_step_everywhere_and_too_many_stop_the_run(capfd):
    # Iteration 2: NaN in a gradient of rank 1 only (after the data-parallel reduction);
    # 4: inf in rank 0's loss; 5: NaN gradient again = 2 in a row = the limit.
    injections = {2: (1, "grad"), 4: (0, "loss"), 5: (1, "grad")}
    results = run_ranks(pretrain_with_nan, 2, FLAGS + [
        "--train-iters", "6", "--max-consecutive-nan-steps", "2", "--log-params-norm"],
        injections)
    out = capfd.readouterr().out
    for result in results:
        assert result["nan_iterations"] == [2, 4, 5]
        assert result["skipped"] == [False, True, False, True, True]
        assert "2 consecutive steps with NaN/inf (--max-consecutive-nan-steps 2)" in \
            result["error"]
        assert "NaN/inf in the gradients on rank 1" in result["error"]
    losses = results[0]["train_losses"]
    assert all(loss == loss for loss in losses[:3]) and losses[3] == float("inf")
    assert "iteration 2: NaN/inf in the gradients on rank 1: step skipped" in out
    assert "iteration 4: NaN/inf in the loss on rank 0: step skipped" in out
    # No update: the weights and the learning rate stay as they were after the step before.
    norms = dict(results[0]["params_norms"])
    assert norms[2] == norms[1] and norms[3] != norms[2]
    assert norms[5] == norms[4] == norms[3]
    lines = _log_lines(out)
    assert _field(lines[2], "learning rate") == _field(lines[1], "learning rate")
    assert _field(lines[3], "learning rate") != _field(lines[2], "learning rate")
    assert [int(_field(lines[i], "number of nan iterations")) for i in range(1, 6)] == \
        [0, 1, 0, 1, 1]
    assert int(_field(lines[2], "number of skipped iterations")) == 0  # counted as nan only
    assert 6 not in lines  # stopped after iteration 5
