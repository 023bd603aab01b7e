"""--check-for-nan-in-loss-and-grad and --max-consecutive-nan-steps on 2 gloo ranks: NaN/inf
injected on one rank is found on every rank, the step is skipped (no optimizer or learning-rate
update), logged and counted, and too many in a row stop the run with one clear message or,
with --rollback-on-nan, roll it back to the last checkpoint and skip the bad batch."""

import math
import re

from tests.distributed import run_ranks
from tests.training.runs import pretrain_runs_with_nan, pretrain_with_nan
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


def test_rollback_on_nan_reloads_the_checkpoint_and_skips_the_bad_batch(tmp_path, capfd):
    # 2 ranks; iteration 4's data "is bad": a NaN gradient on rank 1. Checkpoints every 2.
    flags = FLAGS + ["--train-iters", "6", "--save-interval", "2"]
    inject = {4: (1, "grad")}
    rolled, skipped_only, stopped = run_ranks(pretrain_runs_with_nan, 2, [
        (flags + ["--save", str(tmp_path / "a"), "--max-consecutive-nan-steps", "1",
                  "--rollback-on-nan"], inject),
        # The same bad step, skipped in place and not stopped on (0 = never stop).
        (flags + ["--save", str(tmp_path / "b"), "--max-consecutive-nan-steps", "0"], inject),
        (flags + ["--save", str(tmp_path / "c"), "--max-consecutive-nan-steps", "1"], inject),
    ])[0]
    out = capfd.readouterr().out
    # Rolled back to iteration 2 after the bad step 4, replayed 3, skipped 4's data, went on.
    assert rolled["computed"] == [1, 2, 3, 4, 3, 5, 6]
    assert rolled["rollbacks"] == [(4, 2)] and rolled["data_skipped"] == [4]
    assert "error" not in rolled
    assert ("iteration 4: 1 consecutive steps with NaN/inf, the last NaN/inf in the gradients "
            "on rank 1: rolled back to the checkpoint at iteration 2 (--rollback-on-nan); the "
            "data of iteration 4 will be skipped") in out
    assert "iteration 4: data skipped (--rollback-on-nan)" in out
    losses = rolled["train_losses"]
    assert len(losses) == 7 and all(math.isfinite(loss) for loss in losses)
    assert losses[4] == losses[2]  # the replayed iteration 3 is bit-identical
    # After the rollback the run is where a run that skipped step 4 in place is: same weights
    # (the replay is exact), the data iterator past batch 4 (iteration 5 trains on batch 5).
    assert skipped_only["computed"] == [1, 2, 3, 4, 5, 6]
    assert losses[5:] == skipped_only["train_losses"][4:]
    assert open(tmp_path / "a" / "latest_checkpointed_iteration.txt").read() == "6"
    # Without --rollback-on-nan the same fault stops the run with one line that names it.
    assert stopped["computed"] == [1, 2, 3, 4]
    assert "1 consecutive steps with NaN/inf (--max-consecutive-nan-steps 1)" in \
        stopped["error"] and "--rollback-on-nan" in stopped["error"]
    assert "\n" not in stopped["error"]
    assert open(tmp_path / "c" / "latest_checkpointed_iteration.txt").read() == "2"
