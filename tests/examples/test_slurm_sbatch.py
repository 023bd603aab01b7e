"""examples/slurm/pretrain_ponder.sbatch: valid bash, and the srun + torchrun command it builds
(run with DRY_RUN=1, fake SLURM variables and a fake scontrol)."""

import os
import re
import shlex
import subprocess

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
SCRIPT = os.path.join(REPO_ROOT, "examples", "slurm", "pretrain_ponder.sbatch")


def _run(tmp_path, extra_env, *args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    # What `scontrol show hostnames node[03-05]` prints.
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames node[03-05]" ] || exit 3\n'
                        'printf "node03\\nnode04\\nnode05\\n"\n')
    scontrol.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DRY_RUN": "1",
           "SLURM_SUBMIT_DIR": REPO_ROOT, "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "pile",
           "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_JOB_NODELIST": "node[03-05]"}
    env.update(extra_env)
    return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_bash_syntax():
    completed = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr


def test_sbatch_header_sends_sigterm_before_the_time_limit():
    with open(SCRIPT) as handle:
        text = handle.read()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", text, flags=re.M))
    assert directives["ntasks-per-node"] == "1"  # one torchrun per node
    lead = int(re.fullmatch(r"TERM@(\d+)", directives["signal"]).group(1))
    assert lead > 0 and "time" in directives
    shutdown = int(re.search(r"TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-(\d+)", text).group(1))
    assert shutdown >= lead  # torchrun must not kill the processes before they saved


def test_dry_run_builds_the_srun_torchrun_command(tmp_path):
    completed = _run(tmp_path, {"DATA_PATH": "0.3 /shared/a_text_document 0.7 /shared/b",
                                "RUN_DIR": "/shared/runs/pile", "TP": "2", "PRESET": "tiny"},
                     "--train-iters", "10", "--wandb-exp-name", "a name with spaces")
    assert completed.returncode == 0, completed.stderr
    argv = shlex.split(completed.stdout)
    torchrun = argv.index("torch.distributed.run")
    script = argv.index("pretrain_ponder.py")
    srun, launcher, flags = argv[:torchrun - 2], argv[torchrun + 1:script], argv[script + 1:]
    assert srun == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                    "--kill-on-bad-exit=1"]
    assert argv[torchrun - 2:torchrun] == ["python", "-m"]
    assert launcher == ["--nnodes=3", "--nproc-per-node=4", "--rdzv-backend=c10d",
                        "--rdzv-endpoint=node03:29500", "--rdzv-id=4242", "--max-restarts=0"]
    # The flags are pretrain_ponder.py's own, and the user's come last (they win).
    from megatron_ponder.training.arguments import build_parser

    args = build_parser().parse_args(flags)
    assert args.data_path == ["0.3", "/shared/a_text_document", "0.7", "/shared/b"]
    assert args.save == args.load == "/shared/runs/pile/checkpoints"
    assert args.data_cache_path == "/shared/runs/pile/data_cache"
    assert args.exit_signal_handler
    assert args.tensor_model_parallel_size == 2 and args.model_preset == "tiny"
    assert args.train_iters == 10 and args.wandb_exp_name == "a name with spaces"


def test_explicit_master_and_sizes_override_slurm(tmp_path):
    completed = _run(tmp_path, {"DATA_PATH": "/d/x", "MASTER_ADDR": "head", "MASTER_PORT": "7000",
                                "NNODES": "2", "GPUS_PER_NODE": "8"})
    argv = shlex.split(completed.stdout)
    assert "--rdzv-endpoint=head:7000" in argv and "--nnodes=2" in argv
    assert "--nproc-per-node=8" in argv and "--ntasks=2" in argv


@pytest.mark.parametrize("env, message", [
    ({}, "set DATA_PATH"),
    ({"DATA_PATH": "/d/x", "SLURM_JOB_NODELIST": ""}, "set MASTER_ADDR"),
])
def test_missing_settings_fail_with_one_line(tmp_path, env, message):
    completed = _run(tmp_path, env)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]
    assert message in completed.stderr
