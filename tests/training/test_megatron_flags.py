"""Megatron-LM users' command lines: the flags of its example scripts train here unchanged (scaled
to a tiny model), and flags of features this project lacks fail with one line naming them."""

import math
import os
import subprocess
import sys

import pytest

from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.megatron_flags import UNSUPPORTED
from megatron_ponder.training.resolve import resolve_config
from tests.distributed import run_ranks
from tests.training.runs import pretrain_from_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--max-position-embeddings", "32"]


def gpt3_175b_flags(run_dir):
    """examples/gpt3/train_gpt3_175b_distributed.sh, tiny: sizes, batch and iterations scaled
    down, one process; mock data and NullTokenizer instead of the corpus and GPT-2 vocab/merge
    files; its --step-batch-size-schedule (a recent addition) replaced by the batch-size
    ramp-up the script used before it."""
    return TINY + [
        "--attention-backend", "auto",
        "--micro-batch-size", "1", "--global-batch-size", "2", "--rampup-batch-size", "1", "1",
        "2", "--train-iters", "3",
        "--weight-decay", "0.1", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
        "--init-method-std", "0.006", "--clip-grad", "1.0", "--fp16", "--lr", "6.0e-5",
        "--lr-decay-style", "cosine", "--min-lr", "6.0e-6", "--lr-warmup-fraction", ".001",
        "--lr-decay-iters", "430000",
        "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
        "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200",
        "--split", "949,50,1",
        "--log-interval", "1", "--save-interval", "10000", "--eval-interval", "1000",
        "--save", str(run_dir / "ckpt"), "--load", str(run_dir / "ckpt"), "--eval-iters", "1",
        "--tensorboard-dir", str(run_dir / "tb"),
    ]


def llama3_8b_flags(run_dir):
    """examples/llama/train_llama3_8b_h100_fp8.sh, tiny, its mock-data branch; fp8 and profiling
    aside, and three flags of features this project does not have (--apply-layernorm-1p,
    --decoupled-lr, --decoupled-min-lr: see test_unsupported_flags_fail_with_one_line)."""
    return TINY + [
        "--use-mcore-models", "--ffn-hidden-size", "224", "--group-query-attention",
        "--num-query-groups", "2", "--kv-channels", "16", "--position-embedding-type", "rope",
        "--rotary-base", "1000000", "--rotary-percent", "1.0", "--attention-dropout", "0.0",
        "--hidden-dropout", "0.0", "--swiglu", "--normalization", "RMSNorm",
        "--init-method-std", "0.0134", "--attention-backend", "fused",
        "--untie-embeddings-and-output-weights", "--disable-bias-linear",
        "--micro-batch-size", "1", "--global-batch-size", "2", "--train-samples", "6",
        "--lr-decay-samples", "6", "--lr-warmup-samples", "2", "--lr", "0.00015",
        "--min-lr", "0.00001", "--lr-decay-style", "cosine", "--clip-grad", "1.0",
        "--weight-decay", "0.1", "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--bf16",
        "--grad-reduce-in-bf16", "--cross-entropy-loss-fusion", "--calculate-per-token-loss",
        "--manual-gc", "--empty-unused-memory-level", "1", "--exit-duration-in-mins", "235",
        "--tensor-model-parallel-size", "1", "--context-parallel-size", "1",
        "--sequence-parallel", "--use-distributed-optimizer", "--overlap-grad-reduce",
        "--overlap-param-gather",
        "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200",
        "--data-cache-path", str(run_dir / "cache"), "--split", "99,1,0",
        "--no-create-attention-mask-in-dataloader", "--no-mmap-bin-files", "--num-workers", "1",
        "--log-interval", "1", "--eval-iters", "1", "--eval-interval", "100",
        "--save-interval", "1000", "--log-throughput", "--ckpt-format", "torch_dist",
        "--distributed-timeout-minutes", "60", "--save", str(run_dir / "ckpt"),
        "--load", str(run_dir / "ckpt"), "--tensorboard-dir", str(run_dir / "tb"),
    ]


# The GPT-3 script's run (fp16 loss scaling, batch ramp-up, checkpoint) takes a minute on 2 cores:
# `make test-slow` runs it; the Llama-3 script's runs by default.
@pytest.mark.parametrize("example", [pytest.param(gpt3_175b_flags, marks=pytest.mark.slow),
                                     llama3_8b_flags])
def test_megatron_example_script_flags_train(example, tmp_path):
    flags = example(tmp_path) + ["--num-latent-thoughts", "1"]
    result = run_ranks(pretrain_from_flags, 1, flags, timeout=900)[0]
    assert len(result["train_losses"]) == 3
    assert all(math.isfinite(loss) for loss in result["train_losses"]), result["train_losses"]
    assert os.path.isfile(tmp_path / "ckpt" / "latest_checkpointed_iteration.txt")


def test_megatron_model_flags_agree_with_the_architecture(tmp_path):
    llama = parse_args(llama3_8b_flags(tmp_path))
    assert (llama.model.arch, llama.model.num_query_groups, llama.model.kv_channels) == \
        ("llama", 2, 16)
    assert llama.megatron.swiglu and not llama.data.create_attention_mask
    assert not llama.data.mmap_bin_files
    neox = parse_args(["--mock-data", "--model-arch", "gpt_neox", "--normalization",
                       "LayerNorm"])
    assert neox.model.arch == "gpt_neox"


def test_gpu_performance_flags_are_noted_once_on_cpu(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("on a GPU these flags take effect (see the CUDA run of the example test)")
    notes = []
    resolve_config(parse_args(llama3_8b_flags(tmp_path)), 1, note=notes.append)
    performance = [note for note in notes if "GPU performance flags" in note]
    assert len(performance) == 1
    for flag in ("--grad-reduce-in-bf16", "--overlap-grad-reduce", "--overlap-param-gather",
                 "--attention-backend", "--cross-entropy-loss-fusion"):
        assert flag in performance[0]


UNSUPPORTED_CASES = [
    (["--fp8-format", "hybrid"], "--fp8-format"),
    (["--fp8-amax-history-len", "1024"], "--fp8-amax-history-len"),
    (["--fp8-param-gather"], "--fp8-param-gather"),
    (["--num-experts", "8"], "--num-experts"),
    (["--moe-router-topk", "2"], "--moe-router-topk"),
    (["--expert-model-parallel-size", "2"], "--expert-model-parallel-size"),
    (["--multi-latent-attention"], "--multi-latent-attention"),
    (["--apply-layernorm-1p"], "--apply-layernorm-1p"),
    (["--decoupled-lr", "5e-4"], "--decoupled-lr"),
    (["--step-batch-size-schedule", "0:16 1B:32"], "--step-batch-size-schedule"),
    (["--num-layers-per-virtual-pipeline-stage", "2"], "--num-layers-per-virtual-pipeline-stage"),
    (["--tp-comm-overlap"], "--tp-comm-overlap"),
    (["--use-torch-fsdp2"], "--use-torch-fsdp2"),
    (["--context-parallel-size", "2"], "--context-parallel-size 2"),
    (["--position-embedding-type", "learned_absolute"],
     "--position-embedding-type learned_absolute"),
    (["--attention-dropout", "0.1"], "--attention-dropout 0.1"),
    (["--hidden-dropout", "0.1"], "--hidden-dropout 0.1"),
    (["--ckpt-format", "torch"], "--ckpt-format torch"),
]


@pytest.mark.parametrize("flags,named", UNSUPPORTED_CASES)
def test_unsupported_flags_fail_with_one_line(flags, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--mock-data"] + flags)
    assert exit_info.value.code != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error  # one line: no usage dump
    assert named in error and "not supported" in error
    assert "unrecognized arguments" not in error


def test_every_listed_unsupported_flag_is_rejected_by_name(capsys):
    for flag in UNSUPPORTED:
        with pytest.raises(SystemExit):
            parse_args(["--mock-data", flag])
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"{flag} is not supported" in error, error


@pytest.mark.parametrize("flags,message", [
    (["--num-layer", "2"], "unrecognized arguments: --num-layer 2"),  # no abbreviations
    (["--swiglu", "--model-arch", "gpt_neox"], "--swiglu does not match --model-arch gpt_neox"),
    (["--normalization", "LayerNorm"], "--normalization LayerNorm does not match"),
    (["--disable-bias-linear", "--model-arch", "gpt_neox"], "--disable-bias-linear"),
    (["--max-position-embeddings", "16", "--seq-length", "32"], "less than --seq-length 32"),
    (["--num-layers", "0"], "--num-layers must be >= 1"),
    (["--num-attention-heads", "0"], "--num-attention-heads must be >= 1"),
])
def test_bad_flags_are_one_line(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--mock-data"] + flags)
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error


def test_the_script_reports_an_unsupported_flag_without_a_traceback():
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO, "pretrain_ponder.py"), "--mock-data",
         "--fp8-format", "hybrid"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if "Warning" not in line
             and not line.startswith("  ")]  # third-party import warnings aside
    assert lines == ["pretrain_ponder.py: error: --fp8-format is not supported here (fp8 "
                     "training) (see --help)"], completed.stderr
    assert "Traceback" not in completed.stderr


def test_rampup_batch_size_counts_the_steps_with_megatron_cores_calculator(tmp_path):
    from megatron_ponder.training.resolve import batch_size_calculator

    config = resolve_config(parse_args([
        "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "100",
        "--micro-batch-size", "1", "--global-batch-size", "8", "--rampup-batch-size", "2", "2",
        "12", "--train-samples", "40", "--lr-decay-samples", "40"]), 1)
    # Batches 2, 2, 4, 6 over the first 12 samples (4 per increment), then 8: 46 >= 40.
    assert config.train.train_iters == 8
    calculator = batch_size_calculator(config.train, 1)
    sizes = []
    for consumed in (0, 2, 4, 8, 14):
        calculator.update(consumed, consistency_check=True)
        sizes.append((calculator.get_current_global_batch_size(), calculator.get()))
    assert sizes == [(2, 2), (2, 2), (4, 4), (6, 6), (8, 8)]


@pytest.mark.parametrize("ramp,message", [
    (["3", "2", "12"], "multiples of --micro-batch-size"),
    (["8", "2", "12"], "START must be below"),
    (["2", "2"], "takes three numbers"),
])
def test_rampup_batch_size_errors(ramp, message):
    from megatron_ponder.training.resolve import ConfigError

    with pytest.raises(ConfigError, match=message):
        resolve_config(parse_args(["--mock-data", "--tokenizer-type", "NullTokenizer",
                                   "--vocab-size", "100", "--micro-batch-size", "2",
                                   "--global-batch-size", "8", "--rampup-batch-size"] + ramp),
                       1)


def test_transformer_impl_chooses_the_linear_layers():
    """As in Megatron-LM the default is transformer_engine: Transformer Engine's layers on a
    CUDA machine where it is installed, never with --transformer-impl local (the whole path
    decision is tested in tests/model/test_execution.py)."""
    from megatron_ponder.model.execution import Capabilities

    with_te = Capabilities(cuda=True, transformer_engine=True, apex_gradient_accumulation=True)
    default = parse_args(["--mock-data"])
    assert default.performance.transformer_impl == "transformer_engine"
    assert default.performance.execution_path(default.model, with_te).transformer_engine
    local = parse_args(["--mock-data", "--transformer-impl", "local"])
    assert not local.performance.execution_path(local.model, with_te).transformer_engine