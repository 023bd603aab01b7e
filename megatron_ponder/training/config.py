"""Training-side config dataclasses (optimizer, schedule, batch, checkpoints, logging).

Field names are Megatron-LM's flag names (``micro_batch_size`` -> ``--micro-batch-size``); the
flags are generated from these fields by ``megatron_ponder/flags.py``.
"""

from dataclasses import dataclass, field, fields
from typing import Optional, Tuple

from megatron_ponder.config import ModelConfig, ParallelConfig, PonderConfig
from megatron_ponder.data.config import DEFAULT_SEED, DataConfig
from megatron_ponder.flags import Freezable, flag_name, option
from megatron_ponder.model.execution import ATTENTION_BACKENDS, CROSS_ENTROPY_IMPLS, \
    Capabilities, ExecutionPath, ExecutionRequest, choose_execution_path
from megatron_ponder.tokenizer.config import TokenizerConfig
from megatron_ponder.training.megatron_flags import MegatronModelFlags


@dataclass
class OptimConfig(Freezable):
    """AdamW and the learning-rate schedule (paper: betas 0.9/0.95, wd 0.1, cosine to 10%,
    2% warmup)."""

    lr: float = option(3e-4, "peak learning rate")
    min_lr: Optional[float] = option(None, "final learning rate (default: 10% of --lr)")
    lr_decay_style: str = option("cosine", "decay after warmup",
                               choices=("constant", "linear", "cosine"))
    lr_warmup_fraction: Optional[float] = option(
        0.02, "warmup as a fraction of --lr-decay-iters (ignored with --lr-warmup-iters)")
    lr_warmup_iters: int = option(0, "warmup iterations (overrides --lr-warmup-fraction)")
    lr_decay_iters: Optional[int] = option(None, "iterations to decay over (default: train iters)")
    lr_warmup_samples: int = option(0, "warmup samples, with --train-samples (overrides "
                                  "--lr-warmup-fraction)")
    lr_decay_samples: Optional[int] = option(None, "samples to decay over, with --train-samples "
                                           "(default: --train-samples)")
    weight_decay: float = option(0.1, "AdamW weight decay")
    adam_beta1: float = option(0.9, "Adam beta1")
    adam_beta2: float = option(0.95, "Adam beta2")
    adam_eps: float = option(1e-8, "Adam epsilon")
    clip_grad: float = option(1.0, "clip the global gradient norm to this (0 = off)")
    # On resume, megatron's scheduler insists the schedule flags match the checkpoint's.
    override_opt_param_scheduler: bool = option(
        False, "on resume, follow this run's learning-rate/weight-decay schedule flags instead "
        "of the checkpoint's", flag="--override-opt_param-scheduler")
    use_checkpoint_opt_param_scheduler: bool = option(
        False, "on resume, keep the checkpoint's schedule and ignore this run's schedule flags",
        flag="--use-checkpoint-opt_param-scheduler")
    # Loss scaling, used with --fp16 only (Megatron-LM's flags and defaults).
    loss_scale: Optional[float] = option(None, "static loss scale for --fp16 (default: dynamic)")
    initial_loss_scale: float = option(2.0**32, "dynamic loss scale to start from")
    min_loss_scale: float = option(1.0, "dynamic loss scale floor")
    loss_scale_window: int = option(1000, "steps without overflow before the scale doubles")
    hysteresis: int = option(2, "overflows tolerated before the scale halves")


@dataclass
class TrainConfig(Freezable):
    """Batching, length of the run, seeds and memory/parallel training options."""

    micro_batch_size: int = option(4, "samples per micro-batch per data-parallel rank")
    global_batch_size: Optional[int] = option(
        None, "samples per optimizer step (default: micro batch x data-parallel size); the "
        "rest is gradient accumulation")
    train_iters: Optional[int] = option(
        None, "optimizer steps to train for (default: 100, or --train-samples / "
        "--global-batch-size)")
    train_samples: Optional[int] = option(
        None, "train for this many samples instead of --train-iters; the learning-rate "
        "schedule then counts samples (--lr-decay-samples, --lr-warmup-samples)")
    rampup_batch_size: Tuple[int, ...] = option(
        (), "START INCREMENT SAMPLES: start with a global batch of START samples and grow it "
        "by INCREMENT, in equal steps over the first SAMPLES samples, up to "
        "--global-batch-size (Megatron-LM's ramp-up, megatron-core's calculator)",
        metavar="N")
    seed: int = option(DEFAULT_SEED, "seed for initialisation, data order and the J draws")
    use_distributed_optimizer: bool = option(False, "shard optimizer state over data parallel")
    recompute_granularity: Optional[str] = option(
        None, "activation recomputation per pass", choices=("full", "selective"))
    recompute_method: str = option(
        "uniform", "with --recompute-granularity full: 'uniform' recomputes the layers in "
        "chunks of --recompute-num-layers, 'block' only the first --recompute-num-layers "
        "layers of each pipeline stage", choices=("uniform", "block"))
    recompute_num_layers: int = option(1, "layers per recomputed chunk (uniform) or recomputed "
                                     "layers per stage (block)")
    model_preset: Optional[str] = option(None, "fill model sizes from a named preset "
                                       "(see megatron_ponder/training/presets.py)")
    exit_interval: Optional[int] = option(
        None, "stop after an iteration that is a multiple of N (saving first, with --save)")
    exit_duration_in_mins: Optional[float] = option(
        None, "stop (saving first, with --save) once the job has run this many minutes")
    exit_signal_handler: bool = option(
        False, "on SIGTERM finish the iteration, save (with --save) and stop")
    check_for_nan_in_loss_and_grad: bool = option(
        True, "check every step for NaN/inf in the loss and the gradients on every rank; a bad "
        "step is skipped (no optimizer or learning-rate update) and logged (with --fp16 only "
        "the loss is checked: overflowing gradients are the loss scaler's)")
    max_consecutive_nan_steps: int = option(
        10, "stop the run (exit status 1, no checkpoint written) after this many consecutive "
        "steps with NaN/inf; 0 = never stop")
    rollback_on_nan: bool = option(
        False, "after --max-consecutive-nan-steps consecutive steps with NaN/inf, instead of "
        "stopping, reload the newest complete checkpoint in --save and go on from there, "
        "skipping the data of those steps (the data iterator moves past them)")


@dataclass
class CheckpointConfig(Freezable):
    """megatron-core dist_checkpointing save/load, Megatron-LM's flags."""

    save: Optional[str] = option(None, "directory to save checkpoints to")
    load: Optional[str] = option(None, "directory to resume from (its latest checkpoint)")
    ckpt_step: Optional[int] = option(None, "load this iteration's checkpoint from --load instead "
                                    "of the latest (e.g. to roll back before a loss spike)")
    save_interval: Optional[int] = option(None, "save every N iterations (and at the end)")
    save_retain: Optional[int] = option(
        None, "keep only the newest N checkpoints in --save (older ones are deleted once a new "
        "one is complete; default: keep all)")
    no_load_optim: bool = option(False, "do not load optimizer state when resuming")
    no_load_rng: bool = option(False, "do not load RNG states when resuming")
    finetune: bool = option(False, "load model weights only and start at iteration 0")
    async_save: bool = option(False, "write checkpoints in background processes while training "
                            "continues; the tracker file moves once a save is complete")
    dist_ckpt_optim_fully_reshardable: bool = option(
        False, "save the distributed optimizer's state gathered per parameter (on data-parallel "
        "rank 0), so that it reloads at any tensor/pipeline/data-parallel layout; the default "
        "format is written by every rank in parallel but reloads at the same TP/PP only")


@dataclass
class LoggingConfig(Freezable):
    """What is printed and recorded."""

    log_interval: int = option(10, "print a training log line every N iterations")
    eval_interval: Optional[int] = option(None, "validation every N iterations (default: "
                                        "only at the end)")
    eval_iters: int = option(10, "validation batches (of the global batch size) per evaluation; "
                                "0 turns validation off")
    tensorboard_dir: Optional[str] = option(None, "write TensorBoard scalars here")
    wandb_project: Optional[str] = option(None, "also send the scalars to this Weights & Biases "
                                        "project (pip install wandb; WANDB_MODE=offline works)")
    wandb_exp_name: Optional[str] = option(None, "W&B run name")
    wandb_entity: Optional[str] = option(None, "W&B team or user (default: yours)")
    wandb_save_dir: Optional[str] = option(None, "local W&B files (default: ./wandb)")
    log_params_norm: bool = option(False, "log the L2 norm of all weights (each counted once "
                                 "across tensor/pipeline ranks) every --log-interval")
    profile: bool = option(False, "record steps --profile-step-start..--profile-step-end")
    profile_step_start: int = option(10, "first recorded step (0 = the run's first step)")
    profile_step_end: int = option(12, "recording stops before this step")
    profile_ranks: Tuple[int, ...] = option((0,), "global ranks that record")
    use_pytorch_profiler: bool = option(
        False, "record with the torch profiler (a Chrome/Perfetto trace per rank in "
        "--profile-dir) instead of marking an nsys capture range (cudaProfilerStart/Stop)")
    profile_dir: Optional[str] = option(None, "where torch profiler traces go (default: "
                                      "--tensorboard-dir, else ./profile)")


@dataclass
class PerformanceConfig(Freezable):
    """Megatron-LM's GPU performance flags, with its defaults. They choose the execution path
    (``model/execution.py``: layers, kernels, fusions); on CPU none of them applies."""

    overlap_grad_reduce: bool = option(
        False, "overlap the data-parallel gradient reduction with the backward (on GPUs it is "
        "on whenever every step runs the same passes, with or without this flag)")
    overlap_param_gather: bool = option(
        False, "overlap the distributed optimizer's parameter all-gather with the forward "
        "(needs --use-distributed-optimizer)")
    grad_reduce_in_bf16: bool = option(False, "reduce gradients in bf16 instead of fp32")
    transformer_impl: str = option(
        "transformer_engine", "the layers on a CUDA machine: transformer_engine (as in "
        "Megatron-LM) uses Transformer Engine's fused norm + linear, linears, attention and "
        "norm where it is installed, megatron-core's local layers elsewhere; local: always "
        "megatron-core's local layers with torch SDPA attention",
        choices=("local", "transformer_engine"))
    attention_backend: str = option(
        "auto", "Transformer Engine's attention kernel (auto, flash, fused, unfused); local: "
        "torch SDPA instead of TE's attention", choices=ATTENTION_BACKENDS)
    use_flash_attn: bool = option(False, "as --attention-backend flash")
    cross_entropy_loss_fusion: bool = option(
        False, "fused vocab-parallel cross entropy on GPUs (megatron-core's, or Transformer "
        "Engine's with --cross-entropy-fusion-impl te)")
    cross_entropy_fusion_impl: str = option(
        "native", "which fused cross entropy: native (megatron-core) or te",
        choices=CROSS_ENTROPY_IMPLS)
    use_cpu_initialization: bool = option(
        False, "allocate the parameters on the host, draw their initial values there (as on "
        "CPU) and move them to the GPU afterwards (default on GPUs: allocated and drawn on the "
        "GPU, from the same per-parameter seeds)")
    gradient_accumulation_fusion: bool = option(
        True, "fuse the weight-gradient accumulation into the GEMM on GPUs (needs apex's "
        "fused_weight_gradient_mlp_cuda; --no-gradient-accumulation-fusion turns it off)")
    bias_gelu_fusion: bool = option(True, "fused bias + GeLU (gpt_neox) on GPUs")
    bias_swiglu_fusion: bool = option(True, "fused SwiGLU (llama) on GPUs")
    bias_dropout_fusion: bool = option(True, "fused bias + dropout + residual add on GPUs")
    rope_fusion: bool = option(True, "Transformer Engine's fused RoPE on GPUs")
    masked_softmax_fusion: bool = option(
        True, "accepted: the attention kernels (torch SDPA, Transformer Engine) fuse the "
        "causal mask and softmax themselves")
    persist_layer_norm: bool = option(
        True, "accepted: apex's persistent layer norm is not used (Transformer Engine's or "
        "this project's norms)")

    def execution_request(self, bf16: bool = False) -> ExecutionRequest:
        backend = "flash" if self.use_flash_attn else self.attention_backend
        return ExecutionRequest(
            bf16=bf16,
            transformer_impl=self.transformer_impl, attention_backend=backend,
            cross_entropy_loss_fusion=self.cross_entropy_loss_fusion,
            cross_entropy_fusion_impl=self.cross_entropy_fusion_impl,
            use_cpu_initialization=self.use_cpu_initialization,
            gradient_accumulation_fusion=self.gradient_accumulation_fusion,
            bias_gelu_fusion=self.bias_gelu_fusion, bias_swiglu_fusion=self.bias_swiglu_fusion,
            bias_dropout_fusion=self.bias_dropout_fusion, rope_fusion=self.rope_fusion)

    def execution_path(self, model: ModelConfig,
                       capabilities: Optional[Capabilities] = None) -> ExecutionPath:
        """The layers and kernels these flags give ``model`` on this machine (or on a machine
        with ``capabilities``)."""
        return choose_execution_path(self.execution_request(model.bf16),
                                     capabilities or Capabilities.detect(), model.arch)

    def requested(self):
        """The flags given (non-default), as they are spelled."""
        defaults = PerformanceConfig()
        given = [f for f in fields(self) if getattr(self, f.name) != getattr(defaults, f.name)]
        # A switch that is on by default was given as its --no- form.
        return [("--no-" + flag_name(f)[2:]) if getattr(defaults, f.name) is True
                else flag_name(f) for f in given]


@dataclass
class PretrainConfig(Freezable):
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
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    megatron: MegatronModelFlags = field(default_factory=MegatronModelFlags)
