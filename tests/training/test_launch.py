"""megatron_ponder.training.launch, the torchrun of examples/pretrain_ponder.sh: the flags
checked once before any rank starts, and torchrun's report of failed ranks left out only when
rank 0 reported its error in one line."""

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from megatron_ponder.training import launch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
TINY = ["--model-arch", "gpt_neox", "--num-layers", "2", "--hidden-size", "64",
        "--num-attention-heads", "4", "--seq-length", "32", "--micro-batch-size", "2",
        "--global-batch-size", "2", "--train-iters", "2", "--num-workers", "0"]
MOCK = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200"]


def _mistakes(tmp_path):
    """(flags, exit status, text of the one line): the five first-hour mistakes."""
    empty = tmp_path / "empty"
    empty.mkdir()
    return [
        (MOCK + ["--num-layer", "3"], 2, "unrecognized arguments: --num-layer 3"),
        (["--data-path", str(tmp_path / "missing")], 1, "is missing"),
        (MOCK + ["--num-layers", "0"], 2, "--num-layers must be >= 1"),
        (["--mock-data", "--tokenizer-model", str(tmp_path / "no_tokenizer.json")], 1,
         "no_tokenizer.json"),
        (MOCK + ["--finetune", "--load", str(empty)], 1, "--finetune --load"),
    ]


def test_each_first_hour_mistake_is_one_line_before_any_rank_starts(tmp_path, capsys,
                                                                   monkeypatch):
    started = []
    monkeypatch.setattr("torch.distributed.run.run", started.append)
    for flags, status, text in _mistakes(tmp_path):
        with pytest.raises(SystemExit) as stopped:
            launch.main(["--nproc-per-node", "1", "pretrain_ponder.py"] + TINY + flags)
        assert stopped.value.code == status, flags
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error:" in err and text in err, err
    assert started == []  # torchrun never ran
    launch.main(["--nproc-per-node", "1", "pretrain_ponder.py"] + TINY + MOCK)
    assert len(started) == 1


def test_the_world_size_is_torchruns(capsys):
    flags = TINY + MOCK + ["--tensor-model-parallel-size", "2"]
    with pytest.raises(SystemExit):
        launch.main(["--nproc-per-node", "3", "pretrain_ponder.py"] + flags)
    assert "world size 3" in capsys.readouterr().err


def _failure(tmp_path, rank, exitcode, crashed=False):
    error_file = tmp_path / f"error_{rank}.json"
    if crashed:  # what the trainer's @record writes for an uncaught exception
        error_file.write_text(json.dumps({"message": {"message": "ValueError: x",
                                                      "extraInfo": {"py_callstack": "",
                                                                    "timestamp": "0"}}}))
    return SimpleNamespace(exitcode=exitcode, error_file=str(error_file))


def test_torchruns_report_is_left_out_only_for_a_one_line_error_of_rank_0(tmp_path):
    one_line = _failure(tmp_path, 0, 1)
    assert launch.reported_by_the_ranks({0: one_line})
    assert launch.reported_by_the_ranks({0: one_line, 1: _failure(tmp_path, 1, 1),
                                         2: _failure(tmp_path, 2, -signal.SIGTERM)})
    assert not launch.reported_by_the_ranks({0: _failure(tmp_path, 0, 1, crashed=True)})
    assert not launch.reported_by_the_ranks({1: _failure(tmp_path, 1, 1)})  # nobody printed
    assert not launch.reported_by_the_ranks({0: one_line, 1: _failure(tmp_path, 1, -9)})
    assert not launch.reported_by_the_ranks({0: _failure(tmp_path, 0, -11)})


@pytest.mark.slow
def test_a_rank_error_after_the_check_is_one_line_and_a_crash_keeps_the_report(tmp_path):
    """Real torchrun, one rank: a checkpoint the check cannot judge (a garbage tracker next to
    an unfinished save) stops the rank with one line; a crash shows torchrun's report."""
    root = tmp_path / "ckpt"
    (root / "iter_0000001").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text("garbage")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "megatron_ponder.training.launch", "--nproc-per-node", "1",
               os.path.join(REPO, "pretrain_ponder.py")] + TINY + MOCK
    run = subprocess.run(command + ["--load", str(root)], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "garbage" in errors[0], output
    assert "Traceback" not in output and "ChildFailedError" not in output
    # A crash: an unwritable --save is no one-line error of ours.
    (tmp_path / "file").write_text("")
    crash = subprocess.run(command + ["--save", str(tmp_path / "file" / "ckpt"),
                                      "--save-interval", "1"],
                           env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert crash.returncode == 1
    assert "ChildFailedError" in crash.stderr and "NotADirectoryError" in crash.stderr
