"""Short real training runs (gloo): losses fall, DP=2 equals DP=1, resume is bit-exact."""

import json
import os

import pytest

from tests.distributed import run_ranks
from tests.training.runs import pretrain_from_flags, pretrain_signalled

FLAGS = [
    "--model-arch", "gpt_neox", "--num-layers", "2", "--hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "32",
    "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200",
    "--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "3e-3",
    "--lr-warmup-iters", "1", "--lr-decay-iters", "8", "--num-latent-thoughts", "1",
    "--random-jacobi-iterations", "--num-workers", "0", "--log-interval", "1",
    "--eval-iters", "1", "--seed", "7",
]


def _run(world_size, *extra):
    return run_ranks(pretrain_from_flags, world_size, FLAGS + list(extra))


def test_losses_fall_and_data_parallel_matches_single_process(tmp_path):
    board = tmp_path / "tensorboard"
    single = _run(1, "--train-iters", "8", "--tensorboard-dir", str(board))[0]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(board))
    dual = _run(2, "--train-iters", "8")
    losses = single["train_losses"]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.5, losses
    assert single["validation"] and single["validation"][-1][1] < losses[0]
    # Same global batch (8 samples) as 4 micro-batches on one rank or 2 on each of two.
    assert dual[0]["train_losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    assert dual[0]["grad_norms"] == pytest.approx(single["grad_norms"], rel=1e-4)


def test_eval_iters_zero_turns_validation_off():
    result = _run(1, "--train-iters", "2", "--eval-iters", "0", "--eval-interval", "1")[0]
    assert len(result["train_losses"]) == 2
    assert result["validation"] == []


def test_fp16_skips_overflowing_steps_halves_the_scale_and_trains():
    # 2**16 overflows the float16 gradients of this model; with --hysteresis 1 every overflow
    # halves the scale, until the steps go through.
    result = _run(1, "--fp16", "--initial-loss-scale", str(2**16), "--hysteresis", "1",
                  "--train-iters", "10")[0]
    skipped, scales, losses = result["skipped"], result["loss_scales"], result["train_losses"]
    assert skipped[0] and not all(skipped), skipped
    for before, after, was_skipped in zip([2.0**16] + scales, scales, skipped):
        assert after == (before / 2 if was_skipped else before)  # window 1000: no growth yet
    applied = [loss for loss, s in zip(losses, skipped) if not s]
    assert len(applied) >= 3 and applied[-1] < applied[0] - 0.1, losses
    bf16 = _run(1, "--bf16", "--train-iters", "1")[0]
    assert bf16["loss_scales"] == [1.0] and bf16["skipped"] == [False]


def test_recompute_methods_give_the_same_losses():
    plain = _run(1, "--train-iters", "3")[0]["train_losses"]
    for method, layers in (("block", "1"), ("uniform", "2")):
        recomputed = _run(1, "--train-iters", "3", "--recompute-granularity", "full",
                          "--recompute-method", method, "--recompute-num-layers", layers)[0]
        # Equal up to float32 rounding: bit-for-bit equality holds for some initial weights and
        # not others (the third loss differs in its 7th digit at some seeds, with any init).
        assert recomputed["train_losses"] == pytest.approx(plain, rel=1e-6, abs=0), method


def test_sample_based_schedule_equals_the_same_schedule_in_steps():
    # FLAGS: global batch 8, warmup 1 step, decay over 8 steps = 8 and 64 samples.
    by_steps = _run(1, "--train-iters", "4")[0]["train_losses"]
    position = FLAGS.index("--lr-warmup-iters")
    assert FLAGS[position:position + 4] == ["--lr-warmup-iters", "1", "--lr-decay-iters", "8"]
    in_samples = FLAGS[:position] + FLAGS[position + 4:]
    by_samples = run_ranks(pretrain_from_flags, 1, in_samples + [
        "--train-samples", "32", "--lr-warmup-samples", "8",
        "--lr-decay-samples", "64"])[0]["train_losses"]
    assert by_samples == by_steps


def test_resume_continues_bit_for_bit(tmp_path, capfd):
    save = str(tmp_path / "ckpt")
    uninterrupted = _run(1, "--train-iters", "6")[0]["train_losses"]
    first = _run(1, "--train-iters", "3", "--save", save)[0]["train_losses"]
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "3"
    resumed = _run(1, "--train-iters", "6", "--load", save, "--save", save)[0]["train_losses"]
    assert first == uninterrupted[:3]
    assert resumed == uninterrupted[3:]  # exact equality: same data, J draws, optimizer state
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "6"
    assert sorted(os.listdir(save)) == ["iter_0000003", "iter_0000006",
                                        "latest_checkpointed_iteration.txt"]
    capfd.readouterr()
    again = _run(1, "--train-iters", "6", "--load", save, "--save", save)[0]
    assert again["train_losses"] == []  # a finished run: nothing to train, and it says so
    assert "run complete at iteration 6 (--train-iters 6): nothing to train; to continue it, " \
           "raise --train-iters and pass --override-opt_param-scheduler" in capfd.readouterr().out


def test_exit_interval_saves_and_the_resumed_run_continues_exactly(tmp_path):
    save = str(tmp_path / "ckpt")
    uninterrupted = _run(1, "--train-iters", "6")[0]["train_losses"]
    stopped = _run(1, "--train-iters", "6", "--exit-interval", "4", "--save", save)[0]
    assert stopped["train_losses"] == uninterrupted[:4]
    assert "--exit-interval 4" in stopped["exit_reason"]
    assert stopped["validation"] == []  # an early exit skips the end-of-run validation
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "4"
    resumed = _run(1, "--train-iters", "6", "--load", save)[0]
    assert resumed["train_losses"] == uninterrupted[4:]
    assert resumed["exit_reason"] is None


def test_sigterm_on_one_rank_stops_every_rank_after_that_iteration(tmp_path):
    save = str(tmp_path / "ckpt")
    flags = FLAGS + ["--train-iters", "6", "--exit-signal-handler", "--save", save]
    results = run_ranks(pretrain_signalled, 2, flags, 1, 3)  # SIGTERM to rank 1 in iteration 3
    for result in results:
        assert len(result["train_losses"]) == 3
        assert "SIGTERM" in result["exit_reason"]
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "3"


def test_exit_duration_stops_after_the_first_iteration_past_it():
    result = _run(1, "--train-iters", "4", "--exit-duration-in-mins", "1e-6")[0]
    assert len(result["train_losses"]) == 1
    assert "--exit-duration-in-mins 1e-06" in result["exit_reason"]


@pytest.mark.parametrize("world,extra", [(1, []), (2, ["--use-distributed-optimizer"])],
                         ids=["adam", "distributed-optimizer"])
def test_fp16_resume_keeps_the_loss_scale_and_continues_bit_for_bit(tmp_path, world, extra):
    # Saved at iteration 3, after three overflow-skipped steps: the optimizer has taken no
    # step yet, the edge case Adam's lazily created state makes (see
    # megatron_ponder/mcore/optimizer_state.py, materialize_adam_state).
    save = str(tmp_path / "ckpt")
    flags = ["--fp16", "--initial-loss-scale", str(2**16), "--hysteresis", "1", *extra]
    uninterrupted = run_ranks(pretrain_from_flags, world, FLAGS + ["--train-iters", "6", *flags])[0]
    assert uninterrupted["skipped"][:3] == [True, True, True]
    run_ranks(pretrain_from_flags, world, FLAGS + ["--train-iters", "3", "--save", save, *flags])
    resumed = run_ranks(pretrain_from_flags, world,
                        FLAGS + ["--train-iters", "6", "--load", save, *flags])[0]
    assert resumed["loss_scales"] == uninterrupted["loss_scales"][3:]
    assert resumed["train_losses"] == uninterrupted["train_losses"][3:]


def test_a_changed_schedule_on_resume_needs_a_decision(tmp_path):
    # Extending a run with a longer decay (FLAGS decay over 8 iterations).
    save = str(tmp_path / "ckpt")
    uninterrupted = _run(1, "--train-iters", "6")[0]["train_losses"]
    _run(1, "--train-iters", "3", "--save", save)
    longer = ["--train-iters", "8", "--load", save, "--lr-decay-iters", "16"]
    with pytest.raises(AssertionError, match="--override-opt_param-scheduler"):
        _run(1, *longer)
    kept = _run(1, *longer, "--use-checkpoint-opt_param-scheduler")[0]["train_losses"]
    assert kept[:3] == uninterrupted[3:6]  # the checkpoint's schedule: that of the first run
    overridden = _run(1, *longer, "--override-opt_param-scheduler")[0]["train_losses"]
    assert len(overridden) == 5 and overridden[0] == uninterrupted[3]  # same weights at it. 4
    assert overridden[1] != uninterrupted[4]  # then a different learning rate


def test_ckpt_step_rolls_back_to_an_earlier_checkpoint(tmp_path):
    save = str(tmp_path / "ckpt")
    uninterrupted = _run(1, "--train-iters", "4", "--save", save, "--save-interval", "2")[0]
    rolled_back = _run(1, "--train-iters", "4", "--load", save, "--ckpt-step", "2")[0]
    assert rolled_back["train_losses"] == uninterrupted["train_losses"][2:]
    with pytest.raises(AssertionError, match=r"no checkpoint for iteration 3 .*iter_0000002, "
                                             r"iter_0000004"):
        _run(1, "--train-iters", "4", "--load", save, "--ckpt-step", "3")


@pytest.mark.parametrize("world", [1, 2])
def test_async_save_checkpoints_resume_exactly(tmp_path, world):
    save = str(tmp_path / "ckpt")
    flags = ["--train-iters", "4", "--save", save, "--save-interval", "2", "--async-save"]
    saved = run_ranks(pretrain_from_flags, world, FLAGS + flags)[0]
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "4"
    assert sorted(os.listdir(save)) == ["iter_0000002", "iter_0000004",
                                        "latest_checkpointed_iteration.txt"]
    for step, expected in ((2, saved["train_losses"][2:]), (4, [])):
        resumed = run_ranks(pretrain_from_flags, world, FLAGS + [
            "--train-iters", "4", "--load", save, "--ckpt-step", str(step)])[0]
        assert resumed["train_losses"] == expected


def _trace_step_names(path):
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert any(name.startswith("aten::") for name in names)  # the ops were recorded
    return {name for name in names if name.startswith("train step")}


def test_pytorch_profiler_traces_the_chosen_steps_on_the_chosen_ranks(tmp_path):
    traces = tmp_path / "traces"
    profile = ["--profile", "--use-pytorch-profiler", "--profile-dir", str(traces)]
    run_ranks(pretrain_from_flags, 2, FLAGS + ["--train-iters", "3", *profile,
                                               "--profile-step-start", "1",
                                               "--profile-step-end", "2"])
    assert os.listdir(traces) == ["trace_rank0_steps1-2.json"]  # --profile-ranks: 0
    assert _trace_step_names(traces / "trace_rank0_steps1-2.json") == {"train step 1"}
    # A range past the end of training stops with it; another rank list.
    run_ranks(pretrain_from_flags, 2, FLAGS + ["--train-iters", "3", *profile,
                                               "--profile-step-start", "2",
                                               "--profile-step-end", "9",
                                               "--profile-ranks", "1"])
    assert _trace_step_names(traces / "trace_rank1_steps2-9.json") == {"train step 2"}


def test_distributed_optimizer_resume_is_bit_exact(tmp_path):
    save = str(tmp_path / "ckpt")
    flags = ["--use-distributed-optimizer"]
    uninterrupted = _run(2, "--train-iters", "4", *flags)[0]["train_losses"]
    _run(2, "--train-iters", "2", "--save", save, *flags)
    resumed = _run(2, "--train-iters", "4", "--load", save, *flags)[0]["train_losses"]
    assert resumed == uninterrupted[2:]


def test_switching_the_distributed_optimizer_on_resume_is_refused_clearly(tmp_path):
    save = str(tmp_path / "ckpt")
    _run(1, "--train-iters", "1", "--save", save)
    with pytest.raises(AssertionError, match="saved without --use-distributed-optimizer"):
        _run(1, "--train-iters", "2", "--load", save, "--use-distributed-optimizer")
    resumed = _run(1, "--train-iters", "2", "--load", save, "--use-distributed-optimizer",
                   "--no-load-optim")[0]
    assert len(resumed["train_losses"]) == 1


def test_no_load_optim_and_finetune(tmp_path):
    save = str(tmp_path / "ckpt")
    uninterrupted = _run(1, "--train-iters", "4")[0]["train_losses"]
    _run(1, "--train-iters", "2", "--save", save)
    fresh_adam = _run(1, "--train-iters", "4", "--load", save, "--no-load-optim")[0]
    # Same weights at iteration 3 (same loss), different optimizer state afterwards.
    assert fresh_adam["train_losses"][0] == uninterrupted[2]
    assert fresh_adam["train_losses"][1] != uninterrupted[3]
    finetuned = _run(1, "--train-iters", "2", "--load", save, "--finetune")[0]
    assert len(finetuned["train_losses"]) == 2  # restarted at iteration 0
    assert finetuned["train_losses"][0] < uninterrupted[0] - 0.1  # but from trained weights
