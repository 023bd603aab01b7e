"""Training-side config dataclasses (optimizer, schedule, batch, checkpoints, logging).

Field names are Megatron-LM's flag names (``micro_batch_size`` -> ``--micro-batch-size``); the
flags are generated from these fields by ``training/cli.py``.
"""

from dataclasses import dataclass, field
from typing import Optional, Tuple

from megatron_ponder.config import ModelConfig, ParallelConfig, PonderConfig, _opt
from megatron_ponder.data.config import DataConfig
from megatron_ponder.tokenizer import TIKTOKEN_PATTERNS, TOKENIZER_TYPES


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (paper: betas 0.9/0.95, wd 0.1, cosine to 10%,
    2% warmup)."""

    lr: float = _opt(3e-4, "peak learning rate")
    min_lr: Optional[float] = _opt(None, "final learning rate (default: 10% of --lr)")
    lr_decay_style: str = _opt("cosine", "decay after warmup",
                               choices=("constant", "linear", "cosine"))
    lr_warmup_fraction: Optional[float] = _opt(
        0.02, "warmup as a fraction of --lr-decay-iters (ignored with --lr-warmup-iters)")
    lr_warmup_iters: int = _opt(0, "warmup iterations (overrides --lr-warmup-fraction)")
    lr_decay_iters: Optional[int] = _opt(None, "iterations to decay over (default: train iters)")
    lr_warmup_samples: int = _opt(0, "warmup samples, with --train-samples (overrides "
                                  "--lr-warmup-fraction)")
    lr_decay_samples: Optional[int] = _opt(None, "samples to decay over, with --train-samples "
                                           "(default: --train-samples)")
    weight_decay: float = _opt(0.1, "AdamW weight decay")
    adam_beta1: float = _opt(0.9, "Adam beta1")
    adam_beta2: float = _opt(0.95, "Adam beta2")
    adam_eps: float = _opt(1e-8, "Adam epsilon")
    clip_grad: float = _opt(1.0, "clip the global gradient norm to this (0 = off)")
    # On resume, megatron's scheduler insists the schedule flags match the checkpoint's.
    override_opt_param_scheduler: bool = _opt(
        False, "on resume, follow this run's learning-rate/weight-decay schedule flags instead "
        "of the checkpoint's", flag="--override-opt_param-scheduler")
    use_checkpoint_opt_param_scheduler: bool = _opt(
        False, "on resume, keep the checkpoint's schedule and ignore this run's schedule flags",
        flag="--use-checkpoint-opt_param-scheduler")
    # Loss scaling, used with --fp16 only (Megatron-LM's flags and defaults).
    loss_scale: Optional[float] = _opt(None, "static loss scale for --fp16 (default: dynamic)")
    initial_loss_scale: float = _opt(2.0**32, "dynamic loss scale to start from")
    min_loss_scale: float = _opt(1.0, "dynamic loss scale floor")
    loss_scale_window: int = _opt(1000, "steps without overflow before the scale doubles")
    hysteresis: int = _opt(2, "overflows tolerated before the scale halves")


@dataclass
class TrainConfig:
    """Batching, length of the run, seeds and memory/parallel training options."""

    micro_batch_size: int = _opt(4, "samples per micro-batch per data-parallel rank")
    global_batch_size: Optional[int] = _opt(
        None, "samples per optimizer step (default: micro batch x data-parallel size); the "
        "rest is gradient accumulation")
    train_iters: Optional[int] = _opt(
        None, "optimizer steps to train for (default: 100, or --train-samples / "
        "--global-batch-size)")
    train_samples: Optional[int] = _opt(
        None, "train for this many samples instead of --train-iters; the learning-rate "
        "schedule then counts samples (--lr-decay-samples, --lr-warmup-samples)")
    seed: int = _opt(1234, "seed for initialisation, data order and the J draws")
    use_distributed_optimizer: bool = _opt(False, "shard optimizer state over data parallel")
    recompute_granularity: Optional[str] = _opt(
        None, "activation recomputation per pass", choices=("full", "selective"))
    recompute_method: str = _opt(
        "uniform", "with --recompute-granularity full: 'uniform' recomputes the layers in "
        "chunks of --recompute-num-layers, 'block' only the first --recompute-num-layers "
        "layers of each pipeline stage", choices=("uniform", "block"))
    recompute_num_layers: int = _opt(1, "layers per recomputed chunk (uniform) or recomputed "
                                     "layers per stage (block)")
    model_preset: Optional[str] = _opt(None, "fill model sizes from a named preset "
                                       "(see megatron_ponder/training/presets.py)")
    exit_interval: Optional[int] = _opt(
        None, "stop after an iteration that is a multiple of N (saving first, with --save)")
    exit_duration_in_mins: Optional[float] = _opt(
        None, "stop (saving first, with --save) once the job has run this many minutes")
    exit_signal_handler: bool = _opt(
        False, "on SIGTERM finish the iteration, save (with --save) and stop")
    check_for_nan_in_loss_and_grad: bool = _opt(
        True, "check every step for NaN/inf in the loss and the gradients on every rank; a bad "
        "step is skipped (no optimizer or learning-rate update) and logged (with --fp16 only "
        "the loss is checked: overflowing gradients are the loss scaler's)")
    max_consecutive_nan_steps: int = _opt(
        10, "stop the run (exit status 1, no checkpoint written) after this many consecutive "
        "steps with NaN/inf; 0 = never stop")
    rollback_on_nan: bool = _opt(
        False, "after --max-consecutive-nan-steps consecutive steps with NaN/inf, instead of "
        "stopping, reload the newest complete checkpoint in --save and go on from there, "
        "skipping the data of those steps (the data iterator moves past them)")


@dataclass
class CheckpointConfig:
    """megatron-core dist_checkpointing save/load, Megatron-LM's flags."""

    save: Optional[str] = _opt(None, "directory to save checkpoints to")
    load: Optional[str] = _opt(None, "directory to resume from (its latest checkpoint)")
    ckpt_step: Optional[int] = _opt(None, "load this iteration's checkpoint from --load instead "
                                    "of the latest (e.g. to roll back before a loss spike)")
    save_interval: Optional[int] = _opt(None, "save every N iterations (and at the end)")
    save_retain: Optional[int] = _opt(
        None, "keep only the newest N checkpoints in --save (older ones are deleted once a new "
        "one is complete; default: keep all)")
    no_load_optim: bool = _opt(False, "do not load optimizer state when resuming")
    no_load_rng: bool = _opt(False, "do not load RNG states when resuming")
    finetune: bool = _opt(False, "load model weights only and start at iteration 0")
    async_save: bool = _opt(False, "write checkpoints in background processes while training "
                            "continues; the tracker file moves once a save is complete")
    dist_ckpt_optim_fully_reshardable: bool = _opt(
        False, "save the distributed optimizer's state gathered per parameter (on data-parallel "
        "rank 0), so that it reloads at any tensor/pipeline/data-parallel layout; the default "
        "format is written by every rank in parallel but reloads at the same TP/PP only")


@dataclass
class LoggingConfig:
    """What is printed and recorded."""

    log_interval: int = _opt(10, "print a training log line every N iterations")
    eval_interval: Optional[int] = _opt(None, "validation every N iterations (default: "
                                        "only at the end)")
    eval_iters: int = _opt(10, "validation batches (of the global batch size) per evaluation; "
                                "0 turns validation off")
    tensorboard_dir: Optional[str] = _opt(None, "write TensorBoard scalars here")
    wandb_project: Optional[str] = _opt(None, "also send the scalars to this Weights & Biases "
                                        "project (pip install wandb; WANDB_MODE=offline works)")
    wandb_exp_name: Optional[str] = _opt(None, "W&B run name")
    wandb_entity: Optional[str] = _opt(None, "W&B team or user (default: yours)")
    wandb_save_dir: Optional[str] = _opt(None, "local W&B files (default: ./wandb)")
    log_params_norm: bool = _opt(False, "log the L2 norm of all weights (each counted once "
                                 "across tensor/pipeline ranks) every --log-interval")
    profile: bool = _opt(False, "record steps --profile-step-start..--profile-step-end")
    profile_step_start: int = _opt(10, "first recorded step (0 = the run's first step)")
    profile_step_end: int = _opt(12, "recording stops before this step")
    profile_ranks: Tuple[int, ...] = _opt((0,), "global ranks that record")
    use_pytorch_profiler: bool = _opt(
        False, "record with the torch profiler (a Chrome/Perfetto trace per rank in "
        "--profile-dir) instead of marking an nsys capture range (cudaProfilerStart/Stop)")
    profile_dir: Optional[str] = _opt(None, "where torch profiler traces go (default: "
                                      "--tensorboard-dir, else ./profile)")


@dataclass
class TokenizerConfig:
    """Which tokenizer (Megatron-LM's flags, shared with tools/preprocess_data.py); it fixes the
    padded vocabulary size. megatron_ponder.tokenizer.TokenizerSpec mirrors these fields."""

    tokenizer_type: str = _opt(
        "HuggingFaceTokenizer", "tokenizer kind, as in Megatron-LM (the SentencePiece types, "
        "TikTokenizer, NullTokenizer and HuggingFaceTokenizer with a model directory or hub name "
        "are megatron-core's own tokenizers)",
        choices=TOKENIZER_TYPES)
    tokenizer_model: Optional[str] = _opt(
        None, "HuggingFaceTokenizer: a tokenizer.json, a directory or a hub name (default: the "
        "bundled GPT-NeoX-20B tokenizer, read offline); SentencePieceTokenizer, "
        "GPTSentencePieceTokenizer, Llama2Tokenizer: the SentencePiece .model file; "
        "TikTokenizer: the tiktoken JSON vocabulary; GPT2BPETokenizer without --vocab-file: a "
        ".tiktoken ranks file (default: GPT-2's, from openai-whisper)")
    vocab_file: Optional[str] = _opt(
        None, "GPT2BPETokenizer: GPT-2's vocab.json (with --merge-file)")
    merge_file: Optional[str] = _opt(
        None, "GPT2BPETokenizer: GPT-2's merges.txt (with --vocab-file)")
    vocab_size: Optional[int] = _opt(
        None, "NullTokenizer: ids 0..N-1, end-of-document N; TikTokenizer: vocabulary size "
        "including the special tokens (default there: 131072)")
    tiktoken_pattern: Optional[str] = _opt(
        None, "TikTokenizer: the pre-tokenization regex (default: v2)",
        choices=TIKTOKEN_PATTERNS)
    tiktoken_num_special_tokens: int = _opt(
        1000, "TikTokenizer: ids reserved for special tokens, before the vocabulary's own")
    tiktoken_special_tokens: Tuple[str, ...] = _opt(
        (), "TikTokenizer: the named special tokens, which must include <unk> <s> </s> <mask> "
        "<pad> <cls> <sep> (default: those seven); </s> is the end-of-document token")
    make_vocab_size_divisible_by: int = _opt(128, "pad the vocabulary to a multiple of this "
                                             "times the tensor-parallel size")


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    ponder: PonderConfig = field(default_factory=PonderConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(mock_data=True))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
