"""Resolve a run's configuration before any work starts: every inconsistency is rejected,
saying what to change, and every derived value is filled in one place.

``resolve_config`` returns a frozen copy: nothing later changes it. What it derives is
documented with the flags (global batch size, --train-iters from --train-samples, --min-lr,
the padded vocabulary); the one setting it changes that a user gave, --sequence-parallel at
tensor-parallel size 1, it states through ``note`` (Megatron-LM turns it off there too).
``resolve_run`` also hands over what resolving computed on the way, so that a run computes it
once: the ``ParallelLayout`` (data-parallel size, micro-batches per step, padded vocabulary)
and the tokenizer it built to learn the vocabulary size.
"""

import copy
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megatron_ponder.checkpoint.layout import TRACKER_FILE, checkpoint_dir, \
    is_checkpoint_root, saved_iterations
from megatron_ponder.data.config import DataConfigError
from megatron_ponder.data.datasets import check_data_files
from megatron_ponder.flags import freeze
from megatron_ponder.tokenizer import NULL_TOKENIZER, TIKTOKENIZER, TextTokenizer, \
    TokenizerError, build_tokenizer, check_tokenizer_flags
from megatron_ponder.training.config import PretrainConfig


class ConfigError(ValueError):
    """An inconsistent combination of flags; the message names the flags to change."""


@dataclass(frozen=True)
class ParallelLayout:
    """How a run's processes divide the work, and the sizes that follow from it: derived once,
    by ``resolve_run``, and read everywhere else."""

    world_size: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    """world size / (tensor x pipeline parallel): the model replicas, each fed its own
    micro-batches."""
    micro_batches: int
    """Micro-batches per step on each data-parallel rank at the full --global-batch-size. Every
    step's count without --rampup-batch-size; with it, megatron-core's calculator gives each
    step's count (``Trainer.num_microbatches``), which reaches this one when the ramp-up ends."""
    padded_vocab_size: int
    """Rows of the embedding and output layers (also ``config.model.vocab_size``): the
    tokenizer's vocabulary padded to a multiple of --make-vocab-size-divisible-by x the
    tensor-parallel size."""


@dataclass(frozen=True)
class ResolvedRun:
    """``resolve_run``'s result: the frozen configuration and what resolving it built."""

    config: PretrainConfig
    layout: ParallelLayout
    tokenizer: TextTokenizer
    """The tokenizer built to learn the vocabulary size; the run uses this one."""


def batch_size_calculator(train, data_parallel_size: int, rank: int = 0):
    """megatron-core's number-of-micro-batches calculator for --rampup-batch-size (None without
    it): ``update(consumed_samples, ...)`` then ``get()`` / ``get_current_global_batch_size()``."""
    if not train.rampup_batch_size:
        return None
    from megatron.core.num_microbatches_calculator import \
        RampupBatchsizeNumMicroBatchesCalculator

    start, increment, samples = train.rampup_batch_size
    return RampupBatchsizeNumMicroBatchesCalculator(
        train.global_batch_size, train.micro_batch_size, data_parallel_size,
        decrease_batch_size_if_needed=False, rank=rank, start_global_batch_size=start,
        batch_size_increment=increment, ramup_samples=samples)


def _check_rampup(train, dp: int, pp: int, need) -> bool:
    """Whether --rampup-batch-size is well formed for this layout (else reported)."""
    ramp = train.rampup_batch_size
    if not ramp:
        return True
    if len(ramp) != 3:
        need(False, f"--rampup-batch-size takes three numbers, START INCREMENT SAMPLES; got "
             f"{' '.join(map(str, ramp))}")
        return False
    start, increment, samples = ramp
    unit = train.micro_batch_size * dp
    ok = (0 < start < train.global_batch_size and increment > 0 and samples >= 0
          and (train.global_batch_size - start) % increment == 0
          and start % unit == 0 and increment % unit == 0)
    need(ok, f"--rampup-batch-size {start} {increment} {samples}: START must be below "
         f"--global-batch-size {train.global_batch_size}, which START + n x INCREMENT must "
         f"reach, and START and INCREMENT must be multiples of --micro-batch-size x "
         f"data-parallel size = {unit}")
    if pp > 1 and ok:
        # Every step's micro-batch count must be a multiple of PP (see the same rule for
        # --global-batch-size below).
        need(start % (unit * pp) == 0 and increment % (unit * pp) == 0,
             f"--rampup-batch-size {start} {increment} {samples}: with "
             f"--pipeline-model-parallel-size {pp}, START and INCREMENT must be multiples of "
             f"--micro-batch-size x data-parallel size x pipeline size = {unit * pp} (every "
             f"step's micro-batches run in groups of {pp})")
    return ok


def _ramped_iterations(train, dp: int) -> int:
    """Steps until --train-samples samples are consumed, the global batch ramping up."""
    calculator = batch_size_calculator(train, dp)
    consumed = iterations = 0
    while consumed < train.train_samples:
        calculator.update(consumed, consistency_check=False)
        consumed += calculator.get_current_global_batch_size()
        iterations += 1
    return iterations


def _resolve_length(config: PretrainConfig, need, dp: int = 1,
                    ramp_ok: bool = False) -> None:
    """--train-iters or --train-samples (Megatron-LM's two ways to say how long), and the
    schedule flags that go with each; sets ``train_iters``."""
    train, optim = config.train, config.optim
    if train.train_samples is not None:
        need(train.train_iters is None, "--train-iters and --train-samples exclude each other")
        need(optim.lr_decay_iters is None and not optim.lr_warmup_iters,
             "with --train-samples the schedule counts samples: use --lr-decay-samples and "
             "--lr-warmup-samples instead of --lr-decay-iters / --lr-warmup-iters")
        need(train.train_samples >= train.global_batch_size,
             f"--train-samples {train.train_samples} is less than one global batch "
             f"({train.global_batch_size})")
        if train.rampup_batch_size and ramp_ok:
            train.train_iters = _ramped_iterations(train, dp)
        else:
            train.train_iters = train.train_samples // train.global_batch_size
    else:
        need(optim.lr_decay_samples is None and not optim.lr_warmup_samples,
             "--lr-decay-samples / --lr-warmup-samples need --train-samples")
        if train.train_iters is None:
            train.train_iters = 100
    need(train.train_iters >= 1, "--train-iters must be >= 1")


def _note_performance_flags(config: PretrainConfig, note) -> None:
    """One note per requested GPU feature that will be off, and why (the execution path's
    reasons; on CPU: every GPU flag given)."""
    requested = config.performance.requested()
    if not torch.cuda.is_available():
        if requested:
            note(f"GPU performance flags have no effect on CPU: {', '.join(requested)}")
        return
    for message in config.performance.execution_path(config.model).notes:
        note(message)
    accepted = [flag for flag, off in (
        ("--no-masked-softmax-fusion", not config.performance.masked_softmax_fusion),
        ("--no-persist-layer-norm", not config.performance.persist_layer_norm)) if off]
    if accepted:
        note(f"no effect: {', '.join(accepted)} (the attention kernels fuse mask and softmax "
             "themselves; apex's persistent layer norm is not used)")


def _checkpoint_problem(ckpt) -> Optional[str]:
    """What is wrong with --load / --ckpt-step / --finetune that shows without reading the
    checkpoint (its contents are verified when it is loaded; a damaged tracker falls back
    then), else None. A --load without a checkpoint starts from scratch, as in Megatron-LM,
    where that can be meant: --load is the run's own --save (its first start), or exists."""
    root, step = ckpt.load, ckpt.ckpt_step
    if os.path.exists(root) and not os.path.isdir(root):
        return f"--load {root} is a file, not a checkpoint directory"
    own_save = ckpt.save is not None and os.path.abspath(ckpt.save) == os.path.abspath(root)
    if not os.path.exists(root) and not own_save:
        return (f"--load {root} does not exist (and is not this run's --save directory, "
                f"where a first start finds nothing): check the path")
    if ckpt.finetune and not (is_checkpoint_root(root) or saved_iterations(root)):
        return (f"--finetune --load {root}: no checkpoint there to start from (no "
                f"{TRACKER_FILE}, no iter_* directory)")
    path = checkpoint_dir(root, step) if step is not None else None
    if path is not None and not os.path.isdir(path):
        saved = ", ".join(f"iter_{i:07d}" for i in sorted(saved_iterations(root))) or "none"
        return f"--ckpt-step {step}: no checkpoint for iteration {step} ({path}); {root} holds: " \
            f"{saved}"
    return None


def resolve_config(config: PretrainConfig, world_size: int,
                   note: Optional[Callable[[str], None]] = None) -> PretrainConfig:
    """The run's configuration resolved for ``world_size`` processes and frozen (see
    ``resolve_run``)."""
    return resolve_run(config, world_size, note).config


def resolve_run(config: PretrainConfig, world_size: int,
                note: Optional[Callable[[str], None]] = None) -> ResolvedRun:
    """The run's configuration resolved for ``world_size`` processes and frozen, its layout and
    its tokenizer; ``config`` itself is left as it is. Checks what needs the whole config (each
    dataclass already checked its own fields) and reads dataset headers and the tokenizer, so
    that missing files show up before any process group or model exists. A ConfigError lists
    every problem, on one line. ``note`` (default: a warning) hears each setting that was
    changed."""
    config = copy.deepcopy(config)
    note = note or (lambda message: warnings.warn(message, stacklevel=3))
    model, parallel, train = config.model, config.parallel, config.train
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    errors = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            errors.append(message)

    need(tp >= 1 and pp >= 1, "--tensor-model-parallel-size and "
         "--pipeline-model-parallel-size must be >= 1")
    if tp >= 1 and pp >= 1:
        need(world_size % (tp * pp) == 0,
             f"world size {world_size} (torchrun --nproc-per-node x --nnodes) is not divisible "
             f"by tensor x pipeline parallel = {tp} x {pp}; change the process count or sizes")
    dp = max(world_size // max(tp * pp, 1), 1)
    need(not (model.bf16 and model.fp16), "--bf16 and --fp16 exclude each other: pick one")
    optim = config.optim
    need(not (optim.override_opt_param_scheduler and optim.use_checkpoint_opt_param_scheduler),
         "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler exclude each "
         "other: pick one")
    need(optim.loss_scale is None or optim.loss_scale > 0, "--loss-scale must be > 0")
    need(config.checkpoint.save_retain is None or config.checkpoint.save_retain >= 1,
         "--save-retain must be >= 1 (it keeps the newest N checkpoints)")
    need(config.checkpoint.save_retain is None or config.checkpoint.save,
         "--save-retain needs --save")
    need(train.max_consecutive_nan_steps >= 0, "--max-consecutive-nan-steps must be >= 0")
    if train.rollback_on_nan:
        need(config.checkpoint.save is not None,
             "--rollback-on-nan needs --save DIR (the checkpoints it rolls back to)")
        need(train.max_consecutive_nan_steps >= 1 and train.check_for_nan_in_loss_and_grad,
             "--rollback-on-nan needs --check-for-nan-in-loss-and-grad and "
             "--max-consecutive-nan-steps >= 1 (the bad steps that trigger it)")
    need(optim.initial_loss_scale > 0 and optim.min_loss_scale > 0,
         "--initial-loss-scale and --min-loss-scale must be > 0")
    need(optim.loss_scale_window >= 1 and optim.hysteresis >= 1,
         "--loss-scale-window and --hysteresis must be >= 1")
    need(model.num_layers % max(pp, 1) == 0,
         f"--num-layers {model.num_layers} is not divisible by --pipeline-model-parallel-size "
         f"{pp}")
    for flag, size in (("--num-attention-heads", model.num_attention_heads),
                       ("--num-query-groups", model.num_query_groups),
                       ("--ffn-hidden-size", model.ffn_hidden_size)):
        need(size % max(tp, 1) == 0,
             f"{flag} {size} is not divisible by --tensor-model-parallel-size {tp}")
    if parallel.sequence_parallel and tp == 1:
        note("--sequence-parallel has no effect with --tensor-model-parallel-size 1: running "
             "without it (as Megatron-LM does)")
        parallel.sequence_parallel = False
    if parallel.sequence_parallel:
        need(config.data.seq_length % tp == 0,
             f"--seq-length {config.data.seq_length} must be divisible by "
             f"--tensor-model-parallel-size {tp} with --sequence-parallel (each rank holds "
             f"whole tokens' slots)")

    ponder = config.ponder
    if ponder.ponder_grad_passes is not None:
        passes = len(ponder.method.passes(ponder.thoughts, min(
            ponder.random_jacobi_iterations or (ponder.jacobi_iterations,))))
        if ponder.ponder_grad_passes >= passes:
            note(f"--ponder-grad-passes {ponder.ponder_grad_passes} has no effect: the "
                 f"forward of --ponder-method {ponder.method.name} with K = {ponder.thoughts} "
                 f"has {passes} pass{'es' if passes > 1 else ''}, all of which build a graph")
    if ponder.ponder_warmup_iters and ponder.thoughts == 0:
        note("--ponder-warmup-iters has no effect with K = 0")

    need(train.micro_batch_size >= 1, "--micro-batch-size must be >= 1")
    if train.global_batch_size is None:
        train.global_batch_size = train.micro_batch_size * dp
    ramp_ok = _check_rampup(train, dp, pp, need)
    _resolve_length(config, need, dp, ramp_ok)
    need(train.global_batch_size % (train.micro_batch_size * dp) == 0,
         f"--global-batch-size {train.global_batch_size} is not divisible by --micro-batch-size "
         f"x data-parallel size = {train.micro_batch_size} x {dp}; pick a multiple of "
         f"{train.micro_batch_size * dp}")
    micro_batches = train.global_batch_size // max(train.micro_batch_size * dp, 1)
    if pp > 1 and train.micro_batch_size >= 1:
        # megatron's interleaved schedule (one virtual chunk per pass) runs micro-batches in
        # groups of PP; a partial group would stall the pipeline, and megatron refuses it.
        need(micro_batches % pp == 0,
             f"the number of micro-batches per step, --global-batch-size "
             f"{train.global_batch_size} / (--micro-batch-size {train.micro_batch_size} x "
             f"data-parallel size {dp}) = {micro_batches}, must be a multiple of "
             f"--pipeline-model-parallel-size {pp}; use --global-batch-size "
             f"{train.micro_batch_size * dp * pp * max(1, -(-micro_batches // pp))}")

    optim = config.optim
    if optim.min_lr is None:
        optim.min_lr = 0.1 * optim.lr
    need(optim.lr > 0, "--lr must be positive")
    need(0 <= optim.min_lr <= optim.lr, f"--min-lr {optim.min_lr} must be in [0, --lr {optim.lr}]")
    need(optim.lr_warmup_fraction is None or 0 <= optim.lr_warmup_fraction < 1,
         "--lr-warmup-fraction must be in [0, 1)")
    need(optim.clip_grad >= 0, "--clip-grad must be >= 0")

    need(train.recompute_num_layers >= 1, "--recompute-num-layers must be >= 1")
    if train.recompute_granularity == "full":
        layers_per_stage = model.num_layers // max(pp, 1)
        need(train.recompute_method != "block" or train.recompute_num_layers <= layers_per_stage,
             f"--recompute-num-layers {train.recompute_num_layers} exceeds the "
             f"{layers_per_stage} layers of a pipeline stage (--recompute-method block)")
        need(train.recompute_method != "uniform" or layers_per_stage %
             train.recompute_num_layers == 0,
             f"--recompute-num-layers {train.recompute_num_layers} does not divide the "
             f"{layers_per_stage} layers of a pipeline stage (--recompute-method uniform)")
    need(train.exit_interval is None or train.exit_interval >= 1,
         "--exit-interval must be >= 1")
    need(train.exit_duration_in_mins is None or train.exit_duration_in_mins > 0,
         "--exit-duration-in-mins must be > 0")
    ckpt, log_config = config.checkpoint, config.logging
    if ckpt.save_interval and not ckpt.save:
        note("--save-interval without --save: no checkpoint will be saved (as in Megatron-LM)")
    need(ckpt.save_interval is None or ckpt.save_interval >= 1, "--save-interval must be >= 1")
    need(not (ckpt.finetune and not ckpt.load), "--finetune needs --load DIR")
    need(not (ckpt.async_save and not ckpt.save), "--async-save needs --save DIR")
    need(ckpt.ckpt_step is None or (ckpt.load and ckpt.ckpt_step >= 0),
         "--ckpt-step needs --load DIR and must be >= 0")
    need(log_config.log_interval >= 1, "--log-interval must be >= 1")
    if log_config.profile:
        need(0 <= log_config.profile_step_start < log_config.profile_step_end,
             "--profile-step-start must be >= 0 and below --profile-step-end")
        need(log_config.use_pytorch_profiler or torch.cuda.is_available(),
             "--profile without --use-pytorch-profiler marks an nsys capture range, which needs "
             "CUDA: add --use-pytorch-profiler")
    need(log_config.eval_interval is None or log_config.eval_interval >= 1,
         "--eval-interval must be >= 1")
    need(log_config.eval_iters >= 0, "--eval-iters must be >= 0 (0 turns validation off)")
    if log_config.wandb_project:
        need(importlib.util.find_spec("wandb") is not None,
             "--wandb-project needs the wandb package: pip install wandb")
    if log_config.tensorboard_dir:
        need(importlib.util.find_spec("tensorboard") is not None,
             "--tensorboard-dir needs the tensorboard package: pip install tensorboard")

    tokenizer = config.tokenizer
    try:  # flag combinations and missing files; loading waits for the trainer
        check_tokenizer_flags(tokenizer.spec())
    except TokenizerError as error:
        errors.append(str(error))
    if tokenizer.vocab_size is not None and tokenizer.tokenizer_type not in (
            NULL_TOKENIZER, TIKTOKENIZER):
        errors.append("--vocab-size only applies to --tokenizer-type NullTokenizer and "
                      "TikTokenizer")
    _note_performance_flags(config, note)
    need(not config.performance.overlap_param_gather or train.use_distributed_optimizer,
         "--overlap-param-gather needs --use-distributed-optimizer")
    if not errors:  # missing or inconsistent dataset files, before any process starts
        try:
            check_data_files(config.data)
        except DataConfigError as error:
            errors.append(str(error))
    if not errors and ckpt.load:
        problem = _checkpoint_problem(ckpt)
        if problem:
            errors.append(problem)
    if not errors:
        try:
            built = build_tokenizer(tokenizer.spec())
            model.vocab_size = tokenizer.padded_vocab_size(built, tp)
        except (TokenizerError, OSError) as error:
            errors.append(f"tokenizer: {error}")
    if errors:  # one line, however many problems: it is what pretrain_ponder.py prints
        raise ConfigError("invalid configuration: " + "; ".join(errors))
    layout = ParallelLayout(world_size=world_size, tensor_parallel=tp, pipeline_parallel=pp,
                            data_parallel=dp, micro_batches=micro_batches,
                            padded_vocab_size=model.vocab_size)
    return ResolvedRun(freeze(config), layout, built)
