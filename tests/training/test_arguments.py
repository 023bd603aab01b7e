"""Flags -> configs (Megatron names, presets) and every config-validation error."""

import dataclasses

import pytest
import torch

from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.resolve import ConfigError, ParallelLayout, resolve_config, \
    resolve_run

MOCK = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "100"]


def test_megatron_flag_names_reach_the_configs():
    config = parse_args(MOCK + [
        "--num-layers", "6", "--hidden-size", "96", "--num-attention-heads", "6",
        "--num-query-groups", "2", "--seq-length", "64", "--micro-batch-size", "3",
        "--global-batch-size", "12", "--lr", "1e-3", "--min-lr", "1e-5",
        "--lr-decay-style", "linear", "--lr-warmup-fraction", "0.1", "--train-iters", "50",
        "--weight-decay", "0.05", "--clip-grad", "0.5", "--bf16", "--save", "/tmp/x",
        "--save-interval", "5", "--eval-interval", "10", "--eval-iters", "2",
        "--log-interval", "1", "--seed", "9", "--tensor-model-parallel-size", "2",
        "--sequence-parallel", "--use-distributed-optimizer", "--num-latent-thoughts", "2",
        "--jacobi-iterations", "4", "--random-jacobi-iterations", "2", "3",
    ])
    m, t, o = config.model, config.train, config.optim
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups) == \
        (6, 96, 6, 2)
    assert m.bf16 and str(m.params_dtype) == "torch.bfloat16"
    assert config.data.seq_length == 64 and config.data.seed == 9 and t.seed == 9
    assert (t.micro_batch_size, t.global_batch_size, t.train_iters) == (3, 12, 50)
    assert t.use_distributed_optimizer
    assert (o.lr, o.min_lr, o.lr_decay_style, o.lr_warmup_fraction) == (1e-3, 1e-5, "linear",
                                                                         0.1)
    assert (o.weight_decay, o.clip_grad) == (0.05, 0.5)
    assert config.checkpoint.save == "/tmp/x" and config.checkpoint.save_interval == 5
    assert (config.logging.eval_interval, config.logging.eval_iters) == (10, 2)
    assert config.parallel.tensor_model_parallel_size == 2 and config.parallel.sequence_parallel
    p = config.ponder
    assert (p.num_latent_thoughts, p.jacobi_iterations, p.random_jacobi_iterations) == \
        (2, 4, (2, 3))


def test_preset_fills_sizes_and_explicit_flags_win():
    config = parse_args(MOCK + ["--model-preset", "pythia-410m", "--num-layers", "4"])
    m = config.model
    assert (m.arch, m.hidden_size, m.num_attention_heads, m.ffn_hidden_size) == \
        ("gpt_neox", 1024, 16, 4096)
    assert m.num_layers == 4 and m.rotary_percent == 0.25 and m.parallel_residual
    assert config.data.seq_length == 2048
    llama = parse_args(MOCK + ["--model-preset", "llama-1.4b", "--seq-length", "512"])
    assert (llama.model.arch, llama.model.ffn_hidden_size, llama.model.num_attention_heads) == \
        ("llama", 5504, 32)
    assert llama.data.seq_length == 512


def test_random_jacobi_flag_without_values_uses_the_recipe():
    neox = parse_args(MOCK + ["--model-arch", "gpt_neox", "--random-jacobi-iterations"])
    llama = parse_args(MOCK + ["--model-arch", "llama", "--random-jacobi-iterations"])
    fixed = parse_args(MOCK)
    assert neox.ponder.random_jacobi_iterations == (2, 3, 4)
    assert llama.ponder.random_jacobi_iterations == (2, 3)
    assert fixed.ponder.random_jacobi_iterations == ()


@pytest.mark.parametrize("flags,message", [
    (["--model-preset", "gpt5"], "unknown --model-preset"),
    (["--model-arch", "mamba"], "invalid choice"),
    (["--num-attention-heads", "3", "--hidden-size", "64"], "not divisible by"),
])
def test_parse_errors_exit_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(MOCK + flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_reported(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--tokenizer-type", "NullTokenizer", "--vocab-size", "10"])
    assert "--data-path" in capsys.readouterr().err


def _config(*flags):
    return parse_args(MOCK + ["--num-layers", "4", "--hidden-size", "64",
                              "--num-attention-heads", "4", "--seq-length", "32"] + list(flags))


@pytest.mark.parametrize("flags,world,message", [
    (["--micro-batch-size", "3", "--global-batch-size", "8"], 1, "--global-batch-size 8"),
    (["--micro-batch-size", "2", "--global-batch-size", "6"], 2, "multiple of 4"),
    (["--tensor-model-parallel-size", "2"], 3, "world size 3"),
    (["--pipeline-model-parallel-size", "3"], 3, "--num-layers 4 is not divisible"),
    (["--pipeline-model-parallel-size", "2", "--micro-batch-size", "2",
      "--global-batch-size", "6"], 2,
     "= 3, must be a multiple of --pipeline-model-parallel-size 2"),
    (["--pipeline-model-parallel-size", "2", "--micro-batch-size", "2",
      "--global-batch-size", "6"], 2, "use --global-batch-size 8"),
    (["--pipeline-model-parallel-size", "2", "--tensor-model-parallel-size", "2",
      "--micro-batch-size", "1", "--global-batch-size", "6"], 8,
     r"must be a multiple of --pipeline-model-parallel-size 2"),
    (["--pipeline-model-parallel-size", "4", "--micro-batch-size", "1",
      "--global-batch-size", "2"], 4,
     "= 2, must be a multiple of --pipeline-model-parallel-size 4"),
    (["--pipeline-model-parallel-size", "8"], 8, "--num-layers 4 is not divisible"),
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6,
     "world size 6"),
    (["--tensor-model-parallel-size", "8"], 8, "--num-attention-heads 4"),
    (["--tensor-model-parallel-size", "2", "--group-query-attention", "--num-query-groups",
      "1"], 2, "--num-query-groups 1 is not divisible by --tensor-model-parallel-size 2"),
    (["--tensor-model-parallel-size", "2", "--ffn-hidden-size", "33"], 2,
     "--ffn-hidden-size 33 is not divisible by --tensor-model-parallel-size 2"),
    (["--tensor-model-parallel-size", "2", "--sequence-parallel", "--seq-length", "33"], 2,
     "--seq-length 33"),
    (["--finetune"], 1, "--finetune needs --load"),
    (["--ckpt-step", "3"], 1, "--ckpt-step needs --load"),
    (["--lr", "1e-4", "--min-lr", "1e-3"], 1, "--min-lr"),
    (["--eval-iters", "-1"], 1, "--eval-iters must be >= 0"),
    (["--exit-interval", "0"], 1, "--exit-interval must be >= 1"),
    (["--train-samples", "64", "--train-iters", "3"], 1, "exclude each other"),
    (["--train-samples", "64", "--lr-decay-iters", "3"], 1, "use --lr-decay-samples"),
    (["--lr-decay-samples", "64"], 1, "--lr-decay-samples / --lr-warmup-samples need"),
    (["--train-samples", "3", "--micro-batch-size", "4"], 1, "less than one global batch"),
    (["--profile", "--use-pytorch-profiler", "--profile-step-start", "3",
      "--profile-step-end", "3"], 1, "--profile-step-start must be >= 0 and below"),
    (["--recompute-granularity", "full", "--recompute-method", "block",
      "--recompute-num-layers", "5"], 1, "--recompute-num-layers 5 exceeds the 4 layers"),
    (["--recompute-granularity", "full", "--recompute-num-layers", "3"], 1,
     "--recompute-num-layers 3 does not divide the 4 layers"),
    (["--recompute-granularity", "full", "--recompute-method", "block",
      "--recompute-num-layers", "3", "--pipeline-model-parallel-size", "2",
      "--micro-batch-size", "1", "--global-batch-size", "2"], 2, "exceeds the 2 layers"),
    (["--bf16", "--fp16"], 1, "--bf16 and --fp16 exclude each other"),
    (["--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"], 1,
     "exclude each other"),
    (["--fp16", "--loss-scale", "0"], 1, "--loss-scale must be > 0"),
    (["--fp16", "--hysteresis", "0"], 1, "--hysteresis must be >= 1"),
    (["--exit-duration-in-mins", "0"], 1, "--exit-duration-in-mins must be > 0"),
    (["--log-interval", "0"], 1, "--log-interval"),
    (["--save", "x", "--save-retain", "0"], 1, "--save-retain must be >= 1"),
    (["--save-retain", "2"], 1, "--save-retain needs --save"),
    (["--max-consecutive-nan-steps", "-1"], 1, "--max-consecutive-nan-steps must be >= 0"),
    (["--rampup-batch-size", "1", "1", "8", "--global-batch-size", "4", "--micro-batch-size",
      "1", "--pipeline-model-parallel-size", "2"], 2,
     "multiples of --micro-batch-size x data-parallel size x pipeline size = 2"),
])
def test_validation_errors_say_what_to_change(flags, world, message):
    with pytest.raises(ConfigError, match=message.replace("-", r"\-")):
        resolve_config(_config(*flags), world)


@pytest.mark.parametrize("flags", [
    ("--ponder-method", "pause"), ("--ponder-method", "loop"), ("--ponder-grad-passes", "2"),
    ("--ponder-warmup-iters", "5"), ("--rampup-batch-size", "2", "2", "8"),
])
def test_every_method_and_cheaper_training_option_runs_with_pipeline_parallelism(flags):
    config = resolve_config(_config("--pipeline-model-parallel-size", "2", "--global-batch-size",
                                    "4", "--micro-batch-size", "1", *flags), 2)
    assert config.parallel.pipeline_model_parallel_size == 2


def test_grad_passes_that_cover_every_pass_say_so():
    notes = []
    resolve_config(_config("--ponder-method", "pause", "--ponder-grad-passes", "1"), 1,
                   note=notes.append)
    assert any("--ponder-grad-passes 1 has no effect" in note for note in notes)
    notes.clear()
    resolve_config(_config("--ponder-method", "loop", "--ponder-grad-passes", "1"), 1,
                   note=notes.append)
    assert not any("--ponder-grad-passes" in note for note in notes)


def test_ponder_method_vanilla_is_the_vanilla_flag():
    config = resolve_config(_config("--ponder-method", "vanilla"), 1)
    assert config.ponder.vanilla and config.ponder.thoughts == 0
    assert config.ponder.method.name == "vanilla"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the nsys capture range works")
def test_nsys_profiling_without_cuda_asks_for_the_torch_profiler():
    with pytest.raises(ConfigError, match="add --use-pytorch-profiler"):
        resolve_config(_config("--profile"), 1)


def test_train_samples_set_the_number_of_steps():
    config = resolve_config(_config("--train-samples", "100", "--micro-batch-size", "2",
                                    "--global-batch-size", "8"), 2)
    assert config.train.train_iters == 12  # whole global batches only, as in Megatron-LM
    assert resolve_config(_config(), 1).train.train_iters == 100


def test_the_layout_is_derived_once_with_the_config():
    run = resolve_run(_config("--tensor-model-parallel-size", "2", "--sequence-parallel",
                              "--pipeline-model-parallel-size", "2", "--micro-batch-size", "1",
                              "--global-batch-size", "12"), 12)
    # NullTokenizer --vocab-size 100: 101 ids with its end-of-document, padded to 128 x TP 2.
    assert run.layout == ParallelLayout(world_size=12, tensor_parallel=2, pipeline_parallel=2,
                                        data_parallel=3, micro_batches=4, padded_vocab_size=256)
    assert run.config.model.vocab_size == run.layout.padded_vocab_size
    assert run.tokenizer.vocab_size == 101
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.layout.data_parallel = 1  # type: ignore[misc]
    # Under --rampup-batch-size the layout keeps the count at the full global batch; each
    # step's count is megatron-core's calculator's.
    ramped = resolve_run(_config("--micro-batch-size", "2", "--global-batch-size", "16",
                                 "--rampup-batch-size", "4", "4", "64"), 2).layout
    assert (ramped.data_parallel, ramped.micro_batches) == (2, 4)


def test_recompute_flags_reach_the_transformer_config():
    from megatron_ponder.training.trainer import recompute_overrides

    full = parse_args(MOCK + ["--recompute-granularity", "full", "--recompute-method", "block",
                              "--recompute-num-layers", "2"]).train
    assert recompute_overrides(full) == dict(recompute_granularity="full",
                                             recompute_method="block", recompute_num_layers=2)
    selective = parse_args(MOCK + ["--recompute-granularity", "selective"]).train
    assert recompute_overrides(selective)["recompute_modules"] == ["core_attn"]
    assert recompute_overrides(parse_args(MOCK).train) == {}


@pytest.mark.parametrize("flags,world", [
    (["--pipeline-model-parallel-size", "2", "--micro-batch-size", "1",
      "--global-batch-size", "4"], 2),
    (["--pipeline-model-parallel-size", "2", "--tensor-model-parallel-size", "2",
      "--sequence-parallel", "--micro-batch-size", "1", "--global-batch-size", "4"], 8),
    (["--pipeline-model-parallel-size", "4", "--micro-batch-size", "2",
      "--global-batch-size", "8"], 4),
])
def test_valid_pipeline_layouts_pass(flags, world):
    resolve_config(_config(*flags), world)


def test_every_layout_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        resolve_config(_config("--pipeline-model-parallel-size", "3",
                                "--tensor-model-parallel-size", "8",
                                "--global-batch-size", "4", "--micro-batch-size", "4"), 24)
    message = str(error.value)
    for expected in ("--num-layers 4 is not divisible", "--num-attention-heads 4",
                     "= 1, must be a multiple of --pipeline-model-parallel-size 3"):
        assert expected in message
    assert "\n" not in message  # pretrain_ponder.py prints it as one error line


def test_rollback_on_nan_needs_save_and_a_nan_limit():
    with pytest.raises(ConfigError, match="--rollback-on-nan needs --save DIR"):
        resolve_config(_config("--rollback-on-nan"), 1)
    with pytest.raises(ConfigError, match="--max-consecutive-nan-steps >= 1"):
        resolve_config(_config("--rollback-on-nan", "--save", "ckpt",
                                "--max-consecutive-nan-steps", "0"), 1)
    resolve_config(_config("--rollback-on-nan", "--save", "ckpt"), 1)


def test_null_tokenizer_needs_vocab_size():
    config = _config()
    config.tokenizer = dataclasses.replace(config.tokenizer, vocab_size=None)
    with pytest.raises(ConfigError, match="NullTokenizer needs --vocab-size"):
        resolve_config(config, 1)


def test_derived_defaults():
    config = resolve_config(_config("--micro-batch-size", "2", "--lr", "2e-3"), 4)
    assert config.train.global_batch_size == 8
    assert config.optim.min_lr == pytest.approx(2e-4)
    assert config.model.vocab_size == 128  # NullTokenizer's 100 ids + EOD, padded


def test_resolved_config_is_a_frozen_copy():
    given = _config("--micro-batch-size", "2")
    resolved = resolve_config(given, 1)
    assert given.train.global_batch_size is None  # the input is left as it was
    with pytest.raises(dataclasses.FrozenInstanceError, match="resolved and frozen"):
        resolved.model.vocab_size = 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.train = given.train
    changed = dataclasses.replace(resolved.train, micro_batch_size=4)  # copies stay possible
    assert changed.micro_batch_size == 4 and resolved.train.micro_batch_size == 2


def test_sequence_parallel_at_tp1_is_a_stated_resolution():
    notes = []
    config = resolve_config(_config("--sequence-parallel"), 1, note=notes.append)
    assert not config.parallel.sequence_parallel
    assert len(notes) == 1 and "--sequence-parallel has no effect" in notes[0]
    with pytest.warns(UserWarning, match="no effect"):  # without a listener: a warning
        resolve_config(_config("--sequence-parallel"), 1)


def test_save_interval_without_save_is_accepted_with_a_note():
    notes = []
    config = resolve_config(_config("--save-interval", "5"), 1, note=notes.append)
    assert config.checkpoint.save is None
    assert len(notes) == 1 and "no checkpoint will be saved" in notes[0]


def test_load_without_a_checkpoint(tmp_path):
    """Megatron-LM starts from scratch on an empty --load; a path that cannot be meant so (it
    does not exist and is not the run's own --save) or --finetune from nothing is an error."""
    missing, empty = str(tmp_path / "missing"), tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"--load {missing} does not exist"):
        resolve_config(_config("--load", missing, "--save", str(tmp_path / "out")), 1)
    resolve_config(_config("--load", missing, "--save", missing), 1)  # a first start
    resolve_config(_config("--load", str(empty), "--save", str(tmp_path / "out")), 1)
    for load in (missing, str(empty)):
        with pytest.raises(ConfigError, match=r"\-\-finetune \-\-load .*: no checkpoint there"):
            resolve_config(_config("--finetune", "--load", load, "--save", load), 1)
    (empty / "latest_checkpointed_iteration.txt").write_text("3")
    resolve_config(_config("--finetune", "--load", str(empty)), 1)


def test_run_summary_states_what_will_run():
    from megatron_ponder.training.flops import step_flops
    from megatron_ponder.training.trainer import run_summary

    run = resolve_run(_config("--num-latent-thoughts", "2", "--jacobi-iterations", "3",
                              "--micro-batch-size", "2", "--global-batch-size", "8",
                              "--train-iters", "5", "--tensor-model-parallel-size", "2"), 4)
    config = run.config
    summary = run_summary(config, run.layout)
    per_token = step_flops(config.model, config.ponder, 32, 1, [3]) / 32
    assert f"training FLOPs per token over all passes: {per_token:.3e}" in summary
    assert "K = 2 latent thoughts, J = 3" in summary
    assert "4 processes = TP 2 x PP 1 x DP 2" in summary and "(2 micro-batches per rank)" in summary
    assert "5 iterations x 8 samples x 32 tokens = 1,280 tokens" in summary
    # The execution path (model/execution.py) closes the block; on CPU the local path.
    assert summary.splitlines()[-1].startswith("execution (cpu): linear: local")
    assert len(summary.splitlines()) == 5


def test_eta_format():
    from megatron_ponder.training.logger import format_duration

    assert format_duration(59.6) == "00:01:00"
    assert format_duration(3 * 86400 + 3723) == "3d 01:02:03"
