"""examples/pretrain_ponder.sh, run with bash (it starts torchrun) and under torchrun (with and
without --no-python: each rank runs the trainer itself). DRY_RUN=1 prints the commands; the
torchrun tests run real torchrun with a stand-in PYTHON that records what it is asked to run."""

import os
import shlex
import subprocess
import sys

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
SCRIPT = os.path.join(REPO_ROOT, "examples", "pretrain_ponder.sh")

# Stands in for the interpreter: it answers the GPU probes (`-c`: none here); the corpus
# tool and the trainer are only recorded (the corpus tool "builds" once, slowly, then finds
# its marker), one line per call in $RECORD.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -c ]; then echo 0; exit 0; fi
case "$1" in
  tools/prepare_default_corpus.py)
    if [ -e "$CORPUS_MARKER" ]; then echo "corpus up-to-date rank=$RANK" >> "$RECORD"
    else echo "corpus build-start rank=$RANK" >> "$RECORD"; sleep 2; touch "$CORPUS_MARKER"
         echo "corpus build-end rank=$RANK" >> "$RECORD"; fi ;;
  *) echo "python rank=$RANK local_rank=$LOCAL_RANK $*" >> "$RECORD" ;;
esac
"""


def _fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def _env(tmp_path, **extra):
    env = dict(os.environ, RUN_DIR=str(tmp_path / "run"), RECORD=str(tmp_path / "record"),
               CORPUS_MARKER=str(tmp_path / "corpus_built"))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "PYTHON", "DATA_PATH", "DRY_RUN"):
        env.pop(name, None)
    env.update(extra)
    return env


def _records(tmp_path):
    return (tmp_path / "record").read_text().splitlines()


def _trainer_flags(argv):
    from megatron_ponder.training.arguments import build_parser

    script = argv.index("pretrain_ponder.py")
    return argv[:script], build_parser().parse_args(argv[script + 1:])


def test_valid_bash_and_valid_python():
    completed = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    with open(SCRIPT) as handle:
        compile(handle.read(), SCRIPT, "exec")


def test_bash_form_starts_torchrun_with_the_environments_python(tmp_path):
    env = _env(tmp_path, DRY_RUN="1", PYTHON=sys.executable, DATA_PATH="0.4 /d/a 0.6 /d/b",
               GPUS_PER_NODE="4", TP="2", TRAIN_ITERS="7")
    completed = subprocess.run(["bash", SCRIPT, "--lr", "1e-4"], env=env, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, lines  # DATA_PATH given: no corpus to build
    launcher, args = _trainer_flags(shlex.split(lines[0]))
    assert launcher[:3] == [sys.executable, "-m", "megatron_ponder.training.launch"]
    assert launcher[launcher.index("--nproc-per-node") + 1] == "4"
    # One node without MASTER_PORT: torchrun takes a free port, and the launcher says so.
    assert "--master-port" not in launcher
    assert "MASTER_PORT not set: torchrun takes a free port" in completed.stderr
    assert args.data_path == ["0.4", "/d/a", "0.6", "/d/b"]
    assert args.tensor_model_parallel_size == 2 and args.train_iters == 7
    assert args.lr == 1e-4  # the user's flags come last and win


@pytest.mark.parametrize("variables,port", [({"MASTER_PORT": "6123"}, "6123"),
                                            ({"NNODES": "2", "MASTER_ADDR": "node0"}, "6000")])
def test_a_given_port_or_several_nodes_use_a_fixed_port(tmp_path, variables, port):
    env = _env(tmp_path, DRY_RUN="1", PYTHON=sys.executable, DATA_PATH="/d/x",
               GPUS_PER_NODE="1", **variables)
    completed = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    launcher, _ = _trainer_flags(shlex.split(completed.stdout.strip().splitlines()[-1]))
    assert launcher[launcher.index("--master-port") + 1] == port
    assert "free port" not in completed.stderr


def test_torchrun_environment_runs_the_trainer_directly(tmp_path):
    env = _env(tmp_path, DRY_RUN="1", PYTHON=sys.executable, RANK="1", LOCAL_RANK="1",
               WORLD_SIZE="2")
    completed = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    corpus, trainer = [shlex.split(line) for line in completed.stdout.strip().splitlines()]
    assert corpus[0] == "flock" and corpus[-1] == "tools/prepare_default_corpus.py"
    launcher, args = _trainer_flags(trainer)
    assert launcher == [sys.executable]  # no second torchrun
    assert args.train_data_path == ["data/default/gpt-neox-20b/train_text_document"]
    assert completed.stderr == ""  # rank 1 says nothing


@pytest.mark.parametrize("no_python", [False, True], ids=["python", "no-python"])
def test_under_torchrun_each_rank_trains_and_the_corpus_is_built_once(tmp_path, no_python):
    fake = _fake_python(tmp_path)
    env = _env(tmp_path, PYTHON=str(fake), OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
                "--master-port", "0"] + (["--no-python"] if no_python else [])
    completed = subprocess.run(torchrun + [SCRIPT, "--train-iters", "5"], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    records = _records(tmp_path)
    corpus = [line for line in records if line.startswith("corpus")]
    assert len([line for line in corpus if "build-start" in line]) == 1, corpus
    assert corpus[0].startswith("corpus build-start") and corpus[1].startswith("corpus build-end")
    # Under the lock, one after the other: one build, then the others find it done.
    assert corpus[0].split()[2] == corpus[1].split()[2]
    assert sorted(line.split()[2] for line in corpus[1:]) == ["rank=0", "rank=1", "rank=2"]
    assert all("up-to-date" in line for line in corpus[2:])
    trainers = sorted(line for line in records if line.startswith("python"))
    assert [line.split()[1] for line in trainers] == ["rank=0", "rank=1", "rank=2"]
    for line in trainers:
        assert "torch.distributed.run" not in line and "--train-iters 5" in line
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("python rank=") == 0  # the stand-in trainer prints nothing; the log exists


def test_without_python_set_torchrun_python_is_used(tmp_path):
    """Run with Python (torchrun's default), the script hands PYTHON = that interpreter."""
    env = _env(tmp_path, DRY_RUN="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               DATA_PATH="/d/x")
    completed = subprocess.run([sys.executable, SCRIPT], env=env, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    launcher, _ = _trainer_flags(shlex.split(completed.stdout.strip().splitlines()[-1]))
    assert launcher == [sys.executable]


def _finished_run(tmp_path):
    """A run directory whose run of the default schedule saved its last iteration, 120; the
    launcher's environment for it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("120")
    (run / "schedule").write_text("train_iters=120 lr=2e-3\n")
    return run, _env(tmp_path, DRY_RUN="1", PYTHON=sys.executable, DATA_PATH="/d/x",
                     GPUS_PER_NODE="1")


def test_a_changed_train_iters_on_an_existing_run_says_what_to_do(tmp_path):
    _, env = _finished_run(tmp_path)
    env["TRAIN_ITERS"] = "500"
    changed = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True,
                             timeout=120)
    assert changed.returncode == 1
    message = changed.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "train_iters=120" in message and "train_iters=500" in message
    assert "--override-opt_param-scheduler" in message and "RUN_DIR" in message
    assert "make pretrain ARGS=--override-opt_param-scheduler" in message
    decided = subprocess.run(["bash", SCRIPT, "--override-opt_param-scheduler"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert decided.returncode == 0, decided.stderr


def test_a_finished_run_says_so_and_how_to_continue(tmp_path):
    run, env = _finished_run(tmp_path)
    done = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "", done.stdout  # nothing is started
    assert done.stderr.strip() == (
        f"run complete at iteration 120 ({run}/checkpoints); to continue it: TRAIN_ITERS=240 "
        f"bash examples/pretrain_ponder.sh --override-opt_param-scheduler (with make: make "
        f"pretrain TRAIN_ITERS=240 ARGS=--override-opt_param-scheduler); to start afresh: "
        f"another RUN_DIR")
    # Flags that change the length go to the trainer (which says the same if there is still
    # nothing to do).
    longer = subprocess.run(["bash", SCRIPT, "--train-iters", "200",
                             "--override-opt_param-scheduler"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert longer.returncode == 0 and "pretrain_ponder.py" in longer.stdout, longer.stderr
