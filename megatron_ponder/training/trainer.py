"""The pretraining loop: model + megatron DDP + megatron optimizer/scheduler + schedules.

    pretrain(config):
        with training_session(config) as trainer:     # resolve, start, build (and shut down)
            trainer.resume()                          # from --load if a checkpoint is there
            trainer.train()                           # for each iteration: forward/backward
                                                      # over all micro-batches (every pass),
                                                      # optimizer step, log, validate, save

``training_session`` is the one start-up sequence: pretraining, the benchmark, the measuring
tools and the tests all build their Trainer through it.
"""

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron_ponder import mcore
from megatron_ponder.checkpoint.storage import AsyncCheckpointWriter, config_to_json
from megatron_ponder.data.config import DataConfigError
from megatron_ponder.data.datasets import build_datasets
from megatron_ponder.data.iterators import build_iterators
from megatron_ponder.devices import default_device
from megatron_ponder.errors import FatalRunError
from megatron_ponder.log import get_logger
from megatron_ponder.model.build import build_model
from megatron_ponder.training.checkpointing import load_checkpoint, save_checkpoint
from megatron_ponder.training.config import PretrainConfig, TrainConfig
from megatron_ponder.training.exit import ExitPolicy
from megatron_ponder.training.flops import parameter_count, step_flops, \
    training_flops_per_token
from megatron_ponder.training.logger import TrainingLogger, WandbSettings
from megatron_ponder.training.numerical_faults import NumericalFaultPolicy, find_non_finite
from megatron_ponder.training.profiling import StepProfiler
from megatron_ponder.training.step import PonderForwardStep, reduce_reported_loss
from megatron_ponder.training.resolve import ParallelLayout, ResolvedRun, \
    batch_size_calculator, resolve_run


@dataclass
class TrainingResult:
    """What a run produced, on every rank (losses are only known on the logging rank)."""

    train_losses: List[Optional[float]] = field(default_factory=list)
    """Token-mean training loss of every iteration run in this process."""
    grad_norms: List[Optional[float]] = field(default_factory=list)
    skipped: List[bool] = field(default_factory=list)
    """Per iteration: whether the update was skipped (an fp16 overflow, or NaN/inf)."""
    nan_iterations: List[int] = field(default_factory=list)
    """Iterations skipped because of NaN/inf in the loss or gradients
    (--check-for-nan-in-loss-and-grad)."""
    loss_scales: List[float] = field(default_factory=list)
    """Per iteration: the loss scale after its step (1.0 unless --fp16)."""
    params_norms: List[Tuple[int, float]] = field(default_factory=list)
    """(iteration, L2 norm of all weights) at every log line, with --log-params-norm."""
    validation: List[Tuple[int, float]] = field(default_factory=list)
    """(iteration, validation loss) of every evaluation."""
    rollbacks: List[Tuple[int, int]] = field(default_factory=list)
    """(iteration of the last bad step, iteration rolled back to) of every --rollback-on-nan."""
    data_skipped: List[int] = field(default_factory=list)
    """Iterations whose data was skipped after a rollback (no forward, no update)."""
    exit_reason: Optional[str] = None
    """Why the run stopped before --train-iters (--exit-interval/-duration/-signal), else None."""


logger = get_logger(__name__)


class Trainer:
    """Owns the objects of one run, built from a resolved one (``training_session`` below
    resolves, starts megatron-core and builds it; ``pretrain`` is the entry point)."""

    def __init__(self, run: ResolvedRun, start_time: Optional[float] = None):
        from megatron.core import parallel_state

        config, layout = run.config, run.layout
        self.config, self.layout, self.tokenizer = config, layout, run.tokenizer
        if layout.data_parallel != parallel_state.get_data_parallel_world_size():
            raise RuntimeError(
                f"the run was resolved for {layout.world_size} processes (data-parallel size "
                f"{layout.data_parallel}), but megatron-core's data-parallel size is "
                f"{parallel_state.get_data_parallel_world_size()}: resolve it for the world "
                f"that runs it")
        self.start_time = time.time() if start_time is None else start_time
        train = config.train
        self.num_microbatches = layout.micro_batches
        """This step's micro-batches per data-parallel rank (megatron-core's calculator's
        count during --rampup-batch-size)."""
        self.batch_sizes = batch_size_calculator(train, layout.data_parallel, dist.get_rank())
        self.current_global_batch_size = train.global_batch_size
        self.model = self._build_model()
        self.pipeline = None
        if layout.pipeline_parallel > 1:
            from megatron_ponder.parallel.pipeline import PonderPipeline

            self.pipeline = PonderPipeline(self.model, config.data.seq_length,
                                           train.micro_batch_size)
        self.optimizer, self.scheduler = self._build_optimizer()
        self.forward_step = PonderForwardStep(config.ponder, train.seed, layout.data_parallel)
        self.iteration = 0
        self.consumed_samples = 0
        self.non_finite: Optional[str] = None
        """What NaN/inf the last train_step found (and skipped for), else None."""
        self.numerical_faults = NumericalFaultPolicy(train.max_consecutive_nan_steps,
                                                     train.rollback_on_nan)
        self.result = TrainingResult()
        self.async_writer = AsyncCheckpointWriter() if config.checkpoint.async_save else None
        log_config = config.logging
        self.profiler = StepProfiler(
            log_config.profile, log_config.profile_step_start, log_config.profile_step_end,
            log_config.profile_ranks, log_config.use_pytorch_profiler,
            log_config.profile_dir or log_config.tensorboard_dir or "profile")
        self.logger = TrainingLogger(
            train.train_iters, config.logging.log_interval, layout.world_size,
            train.global_batch_size, config.data.seq_length,
            enabled=_is_logging_rank(), tensorboard_dir=config.logging.tensorboard_dir,
            wandb=_wandb_settings(config))

    # ------------------------------------------------------------------------------ building
    def _build_model(self):
        from megatron.core.distributed import DistributedDataParallel, \
            DistributedDataParallelConfig, finalize_model_grads

        cfg = self.config
        overrides = dict(calculate_per_token_loss=True, **recompute_overrides(cfg.train))
        module = build_model(cfg.model, cfg.ponder, cfg.parallel,
                             path=cfg.performance.execution_path(cfg.model),
                             seed=cfg.train.seed,
                             **overrides).to(default_device())
        transformer_config = module.config
        on_gpu, performance = torch.cuda.is_available(), cfg.performance
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=not (on_gpu and performance.grad_reduce_in_bf16),
            overlap_grad_reduce=on_gpu and grad_reduce_can_overlap(cfg),
            overlap_param_gather=on_gpu and performance.overlap_param_gather,
            use_distributed_optimizer=cfg.train.use_distributed_optimizer,
            average_in_collective=False,
        )
        model = DistributedDataParallel(transformer_config, ddp_config, module)
        transformer_config.no_sync_func = model.no_sync
        transformer_config.finalize_model_grads_func = finalize_model_grads
        return model

    def _build_optimizer(self):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        cfg, optim = self.config, self.config.optim
        optimizer_config = OptimizerConfig(
            optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
            adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2, adam_eps=optim.adam_eps,
            clip_grad=optim.clip_grad, bf16=cfg.model.bf16, fp16=cfg.model.fp16,
            loss_scale=optim.loss_scale, initial_loss_scale=optim.initial_loss_scale,
            min_loss_scale=optim.min_loss_scale, loss_scale_window=optim.loss_scale_window,
            hysteresis=optim.hysteresis,
            params_dtype=cfg.model.params_dtype,
            use_distributed_optimizer=cfg.train.use_distributed_optimizer,
        )
        optimizer = get_megatron_optimizer(optimizer_config, [self.model],
                                           config_overrides=weight_decay_overrides())
        self.model.config.grad_scale_func = optimizer.scale_loss
        # The schedule counts iterations, or samples with --train-samples (as in Megatron-LM).
        if cfg.train.train_samples is not None:
            self.scheduler_increment = cfg.train.global_batch_size  # each step's, with ramp-up
            decay = optim.lr_decay_samples or cfg.train.train_samples
            warmup = optim.lr_warmup_samples
        else:
            self.scheduler_increment = 1
            decay = optim.lr_decay_iters or cfg.train.train_iters
            warmup = optim.lr_warmup_iters
        warmup = warmup or int(round((optim.lr_warmup_fraction or 0) * decay))
        scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0, max_lr=optim.lr, min_lr=optim.min_lr,
            lr_warmup_steps=warmup, lr_decay_steps=decay,
            lr_decay_style=optim.lr_decay_style, start_wd=optim.weight_decay,
            end_wd=optim.weight_decay, wd_incr_steps=decay, wd_incr_style="constant",
            use_checkpoint_opt_param_scheduler=optim.use_checkpoint_opt_param_scheduler,
            override_opt_param_scheduler=optim.override_opt_param_scheduler)
        return optimizer, scheduler

    # ------------------------------------------------------------------------------ running
    def resume(self) -> None:
        ckpt = self.config.checkpoint
        if not ckpt.load:
            return
        finetune = ckpt.finetune
        state = load_checkpoint(
            ckpt.load, self.model.module,
            optimizer=None if (finetune or ckpt.no_load_optim) else self.optimizer,
            scheduler=None if finetune else self.scheduler,
            load_rng=not (finetune or ckpt.no_load_rng), iteration=ckpt.ckpt_step,
            ddp_model=self.model)
        if state is None:
            logger.info(f"note: no checkpoint in --load {ckpt.load}: starting from scratch "
                        f"(random weights, iteration 0)")
            return
        if not finetune:
            self.iteration = state["iteration"]
            self.consumed_samples = state["consumed_samples"]
        logger.info(f"loaded checkpoint from {ckpt.load} at iteration {state['iteration']}"
                     + (" (finetune: starting at iteration 0)" if finetune else ""))
        train_iters = self.config.train.train_iters
        if self.iteration >= train_iters:
            logger.info(f"run complete at iteration {self.iteration} (--train-iters "
                        f"{train_iters}): nothing to train; to continue it, raise --train-iters "
                        f"and pass --override-opt_param-scheduler (the learning-rate schedule "
                        f"then follows the new length)")

    def training_data(self):
        """Build the datasets (train and validation) and return this rank's training
        micro-batch iterator from the current ``consumed_samples``."""
        train, data = self.config.train, self.config.data
        eval_runs = (train.train_iters // self.config.logging.eval_interval
                     if self.config.logging.eval_interval else 0) + 1
        try:
            datasets = build_datasets(
                data, self.tokenizer, train_samples=train.train_iters * train.global_batch_size,
                valid_samples=self.config.logging.eval_iters * train.global_batch_size
                * eval_runs)
        except DataConfigError as error:  # a missing prefix, an unshared cache: one line
            raise FatalRunError(str(error)) from error
        self.train_dataset, self.valid_dataset = datasets[0], datasets[1]
        return self._train_iterator()

    def _train_iterator(self):
        """This rank's training micro-batches from ``self.consumed_samples`` on."""
        from megatron.core import parallel_state

        train_iter, _, _ = build_iterators(
            (self.train_dataset, None, None), self.config.data,
            self.config.train.micro_batch_size,
            data_parallel_rank=parallel_state.get_data_parallel_rank(),
            data_parallel_size=self.layout.data_parallel,
            consumed_train_samples=self.consumed_samples)
        return train_iter

    def _forward_backward(self, data_iterator, forward_only: bool):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        train, data = self.config.train, self.config.data
        if self.pipeline is not None:
            step = self.forward_step
            return self.pipeline.forward_backward(
                data_iterator, step.jacobi_used, step.thoughts, step.prepare,
                step.loss_func_for, forward_only=forward_only)
        return get_forward_backward_func()(
            forward_step_func=self.forward_step, data_iterator=data_iterator,
            model=[self.model], num_microbatches=self.num_microbatches,
            seq_length=data.seq_length, micro_batch_size=train.micro_batch_size,
            forward_only=forward_only)

    def compute_gradients(self, data_iterator) -> List[dict]:
        """Forward and backward over every micro-batch and pass of one step; afterwards the
        DDP gradient buffers hold the data-parallel-reduced, per-token-scaled gradients."""
        self.forward_step.begin(self.iteration, training=True,
                                num_microbatches=self.num_microbatches)
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        return self._forward_backward(data_iterator, forward_only=False)

    def apply_update(self):
        """Optimizer and LR-scheduler step on the gradients of ``compute_gradients``."""
        update_successful, grad_norm, _ = self.optimizer.step()
        if update_successful:
            self.scheduler.step(increment=self.scheduler_increment)
        return grad_norm, not update_successful

    def train_step(self, data_iterator):
        """One step: (loss, grad norm, skipped). With --check-for-nan-in-loss-and-grad a step
        with NaN/inf anywhere is skipped before the optimizer and ``self.non_finite`` says
        what was found (else None)."""
        reports = self.compute_gradients(data_iterator)
        self.non_finite = None
        if self.config.train.check_for_nan_in_loss_and_grad:
            self.non_finite = self.find_non_finite(reports)
            if self.non_finite is not None:  # no optimizer step, no scheduler step
                return reduce_reported_loss(reports), None, True
        grad_norm, skipped = self.apply_update()
        return reduce_reported_loss(reports), grad_norm, skipped

    def find_non_finite(self, reports: List[dict]) -> Optional[str]:
        """Collective: what NaN/inf this step's losses or gradients hold on any rank, or None.
        Gradients are not checked with --fp16: overflows there are the dynamic loss scaler's
        to handle (it skips the step and lowers the scale)."""
        return find_non_finite(reports, self.model, check_grads=not self.config.model.fp16)

    def evaluate(self) -> Optional[float]:
        """Mean validation loss over ``eval_iters`` global batches, always the same batches
        (the start of the validation split) so that evaluations are comparable. None where the
        loss is not known (no validation data, or not the last pipeline stage)."""
        from megatron.core import parallel_state

        if self.valid_dataset is None or self.config.logging.eval_iters == 0:
            return None
        _, valid_iter, _ = build_iterators(
            (None, self.valid_dataset, None), self.config.data, self.config.train.micro_batch_size,
            data_parallel_rank=parallel_state.get_data_parallel_rank(),
            data_parallel_size=self.layout.data_parallel)
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for _ in range(self.config.logging.eval_iters):
                self.forward_step.begin(self.iteration, training=False,
                                        num_microbatches=self.num_microbatches)
                # Reports come back on the last pipeline stage only.
                for report in self._forward_backward(valid_iter, forward_only=True):
                    totals += report["lm loss"].double().cpu()
        self.model.train()
        if not parallel_state.is_pipeline_last_stage():
            return None
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        return (totals[0] / totals[1].clamp(min=1)).item()

    def save(self) -> None:
        ckpt = self.config.checkpoint
        path = save_checkpoint(ckpt.save, self.iteration, self.model.module, self.optimizer,
                               self.scheduler, self.consumed_samples, self.config,
                               optim_fully_reshardable=ckpt.dist_ckpt_optim_fully_reshardable,
                               async_writer=self.async_writer, retain=ckpt.save_retain)
        logger.info(f"{'started saving' if self.async_writer else 'saved'} checkpoint at "
                     f"iteration {self.iteration} to {path}")

    def _finish_async_saves(self, blocking: bool) -> None:
        if self.async_writer is None:
            return
        for iteration in self.async_writer.poll(blocking=blocking):
            logger.info(f"finished saving checkpoint at iteration {iteration} (async)")

    def _validate_and_log(self) -> None:
        loss = self.evaluate()
        if loss is not None:
            self.result.validation.append((self.iteration, loss))
            self.logger.log_validation(self.iteration, loss)

    def train(self) -> TrainingResult:
        train, log_config = self.config.train, self.config.logging
        train_iter = self.training_data()
        self.model.train()
        if self.iteration == 0 and log_config.eval_interval:
            self._validate_and_log()
        exit_policy = ExitPolicy(train.exit_interval, train.exit_duration_in_mins,
                                 train.exit_signal_handler, start_time=self.start_time)
        with exit_policy:
            self._train_loop(train_iter, exit_policy)
        self.profiler.stop()  # if training ended before --profile-step-end
        # Not on an exception: a collective there could hang; the tracker keeps naming the last
        # complete checkpoint either way.
        self._finish_async_saves(blocking=True)
        if self.result.exit_reason is not None:
            logger.info(f"exiting after iteration {self.iteration}: {self.result.exit_reason}")
        elif not log_config.eval_interval:
            self._validate_and_log()
        self.logger.close()
        return self.result

    def _train_loop(self, train_iter, exit_policy: ExitPolicy) -> None:
        cfg = self.config
        train, log_config, ckpt = cfg.train, cfg.logging, cfg.checkpoint
        first_iteration = self.iteration
        while self.iteration < train.train_iters:
            if self.numerical_faults.skips(self.iteration + 1):
                self._skip_data(train_iter)
            elif self._run_step(self.iteration - first_iteration, train_iter):
                train_iter = self._roll_back()
                continue
            done = self.iteration == train.train_iters
            if log_config.eval_interval and (
                    self.iteration % log_config.eval_interval == 0 or done):
                self._validate_and_log()
            self._finish_async_saves(blocking=False)
            exit_reason = None if done else exit_policy.reason(self.iteration)
            if ckpt.save and ((ckpt.save_interval and self.iteration % ckpt.save_interval == 0)
                              or done or exit_reason):
                self.save()
            if exit_reason:
                self.result.exit_reason = exit_reason
                return

    def _set_batch_size(self) -> None:
        """With --rampup-batch-size: this step's global batch and micro-batch count."""
        if self.batch_sizes is None:
            return
        self.batch_sizes.update(self.consumed_samples, consistency_check=True)
        self.num_microbatches = self.batch_sizes.get()
        self.current_global_batch_size = self.batch_sizes.get_current_global_batch_size()
        self.logger.global_batch_size = self.current_global_batch_size
        if self.config.train.train_samples is not None:
            self.scheduler_increment = self.current_global_batch_size

    def _run_step(self, step: int, train_iter) -> bool:
        """One training iteration with its bookkeeping and log line. True when it completed
        --max-consecutive-nan-steps bad steps in a row and --rollback-on-nan is to handle
        that; without the option a NumericalFaultError stops the run instead."""
        cfg = self.config
        train, log_config = cfg.train, cfg.logging
        self._set_batch_size()
        self.profiler.step_begin(step)
        start = time.time()
        with self.profiler.label(step):
            loss, grad_norm, skipped = self.train_step(train_iter)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.time() - start
        jacobi = self._gather_jacobi()
        self.result.train_losses.append(loss)
        self.result.grad_norms.append(grad_norm)
        self.result.skipped.append(bool(skipped))
        loss_scale = float(self.optimizer.get_loss_scale())
        self.result.loss_scales.append(loss_scale)
        self.iteration += 1
        self.consumed_samples += self.current_global_batch_size
        non_finite = self.non_finite
        self.numerical_faults.record(non_finite)
        if non_finite:
            self.result.nan_iterations.append(self.iteration)
            logger.info(f"iteration {self.iteration}: {non_finite}: step skipped (no "
                        f"optimizer or learning-rate update; "
                        f"{self.numerical_faults.consecutive} in a row)")
        flops = step_flops(cfg.model, cfg.ponder, cfg.data.seq_length,
                           train.micro_batch_size, jacobi,
                           num_latent_thoughts=cfg.ponder.thoughts_at(self.iteration - 1))
        self.logger.record_step(seconds, flops, loss, jacobi,
                                skipped and not non_finite, nan=bool(non_finite))
        params_norm = None
        if log_config.log_params_norm and self.logger.is_log_iteration(self.iteration):
            params_norm = params_l2_norm(self.model.module)
            self.result.params_norms.append((self.iteration, params_norm))
        self.logger.maybe_log(self.iteration, self.consumed_samples,
                              self.optimizer.param_groups[0]["lr"], grad_norm, loss_scale,
                              params_norm)
        return self.numerical_faults.must_roll_back(self.iteration, non_finite)

    def _skip_data(self, train_iter) -> None:
        """An iteration whose data a rollback skips: its micro-batches are read and dropped
        (every rank reads the same number), no forward, no optimizer or learning-rate step."""
        self._set_batch_size()
        for _ in range(self.num_microbatches):
            next(train_iter)
        self.iteration += 1
        self.consumed_samples += self.current_global_batch_size
        self.result.data_skipped.append(self.iteration)
        logger.info(f"iteration {self.iteration}: data skipped (--rollback-on-nan)")
        self.logger.maybe_log(self.iteration, self.consumed_samples,
                              self.optimizer.param_groups[0]["lr"], None,
                              float(self.optimizer.get_loss_scale()))

    def _roll_back(self):
        """--rollback-on-nan, on every rank (the NaN check is collective, so all of them come
        here after the same iteration): reload the newest complete checkpoint in --save, mark
        the bad steps' data to be skipped and return a data iterator positioned at the
        checkpoint."""
        root, faults = self.config.checkpoint.save, self.numerical_faults
        failed_at, reason = self.iteration, self.non_finite
        bad = faults.bad_iterations(failed_at)
        self._finish_async_saves(blocking=True)  # the newest checkpoint may still be written
        state = load_checkpoint(root, self.model.module, optimizer=self.optimizer,
                                scheduler=self.scheduler, load_rng=True, ddp_model=self.model)
        if state is None:
            raise faults.no_checkpoint(failed_at, reason, root)
        self.iteration = state["iteration"]
        self.consumed_samples = state["consumed_samples"]
        skipped = faults.rolled_back(failed_at, self.iteration)
        self.result.rollbacks.append((failed_at, self.iteration))
        logger.info(
            f"iteration {failed_at}: {len(bad)} consecutive steps with NaN/inf, the last "
            f"{reason}: rolled back to the checkpoint at iteration {self.iteration} "
            f"(--rollback-on-nan); the data of iteration{'s' if len(skipped) > 1 else ''} "
            f"{', '.join(map(str, skipped)) or '(none)'} will be skipped")
        return self._train_iterator()

    def _gather_jacobi(self):
        """Every data-parallel rank's J draws of this step (for FLOP counting and logging)."""
        from megatron.core import parallel_state

        local = torch.tensor(self.forward_step.jacobi_used, dtype=torch.int64)
        gathered = [torch.empty_like(local) for _ in range(self.layout.data_parallel)]
        dist.all_gather(gathered, local, group=parallel_state.get_data_parallel_group())
        return torch.cat(gathered).tolist()


def _wandb_settings(config: PretrainConfig) -> Optional[WandbSettings]:
    log_config = config.logging
    if not log_config.wandb_project:
        return None
    return WandbSettings(project=log_config.wandb_project, exp_name=log_config.wandb_exp_name,
                         entity=log_config.wandb_entity,
                         save_dir=log_config.wandb_save_dir or "wandb",
                         config=json.loads(config_to_json(config)))


def weight_decay_overrides() -> dict:
    """megatron-core's rule, no weight decay for biases and 1-D parameters (norms), except for
    1-D parameters marked ``decayed`` (the Pause baseline's pause vector)."""
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
    from megatron.core.optimizer_param_scheduler import ParamGroupOverride

    exempt = ParamWithNamePredicate(
        name="bias_or_1d_not_decayed",
        fn=lambda param, name: ((len(param.shape) == 1 or name.endswith(".bias"))
                                and not getattr(param, "decayed", False)))
    return {ParamKey(with_name_predicate=exempt): ParamGroupOverride(wd_mult=0.0)}


def params_l2_norm(model: torch.nn.Module) -> float:
    """L2 norm of all weights as one vector, each weight counted once: tensor-parallel shards
    summed, replicated weights (norms, biases of row-parallel layers) taken from one rank, every
    pipeline stage included. A collective over the model-parallel group (Megatron-LM's
    --log-params-norm)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    squares = torch.zeros((), dtype=torch.float64, device=default_device())
    for param in model.parameters():
        if param_is_not_shared(param) and param_is_not_tensor_parallel_duplicate(param):
            squares += param.detach().float().square().sum().double()
    dist.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    return squares.sqrt().item()


def recompute_overrides(train: TrainConfig) -> dict:
    """TransformerConfig fields for the --recompute-* flags (applied in every pass)."""
    if train.recompute_granularity == "full":
        return dict(recompute_granularity="full", recompute_method=train.recompute_method,
                    recompute_num_layers=train.recompute_num_layers)
    if train.recompute_granularity == "selective":
        return dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    return {}


def grad_reduce_can_overlap(config: PretrainConfig) -> bool:
    """Whether megatron DDP may overlap the gradient reduction with the backward: only when
    every step runs the same passes.

    With overlap, DDP starts reducing a bucket once each of its parameters has received as many
    gradients in the last micro-batch as it did in the first step. Every pass reuses every
    layer, so that count is the pass count, which changes from step to step when J is drawn per
    micro-batch: the reduction would start early or never (with PP=2 x DP=2 on gloo the step
    hung; with fixed J, overlap gave the same losses as without). It would also gain little: a
    parameter's gradient is complete only after pass 0 of the last micro-batch, leaving one
    pass's backward to overlap with.
    """
    ponder = config.ponder
    if ponder.ponder_warmup_iters:  # the pass count changes when the thoughts start
        return False
    return not (ponder.random_jacobi_iterations and ponder.method.draws_jacobi(ponder.thoughts))


def _is_logging_rank() -> bool:
    """The rank that holds the loss: last pipeline stage, first tensor/data-parallel rank."""
    from megatron.core import parallel_state

    return (parallel_state.is_pipeline_last_stage()
            and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank() == 0)


def run_summary(config: PretrainConfig, layout: ParallelLayout) -> str:
    """What the run will do, in a few lines: printed once at the start."""
    model, ponder, train = config.model, config.ponder, config.train
    jacobi = (f"drawn from {list(ponder.random_jacobi_iterations)} per micro-batch"
              if ponder.random_jacobi_iterations else str(ponder.jacobi_iterations))
    seq = config.data.seq_length
    tokens = train.train_iters * train.global_batch_size * seq
    flops = training_flops_per_token(model, ponder, seq)
    lines = [
        f"model: {model.arch}, {parameter_count(model, ponder) / 1e6:.2f}M parameters, "
        f"{model.num_layers} layers, hidden {model.hidden_size}, vocabulary {model.vocab_size}",
        f"method: {ponder.method.name}, K = {ponder.thoughts} latent thoughts, J = {jacobi}; "
        f"training FLOPs per token over all passes: {flops:.3e}",
        f"layout: {layout.world_size} processes = TP {layout.tensor_parallel} x PP "
        f"{layout.pipeline_parallel} x DP {layout.data_parallel}"
        f"{', sequence parallel' if config.parallel.sequence_parallel else ''}; micro-batch "
        f"{train.micro_batch_size}, global batch {train.global_batch_size} "
        f"({layout.micro_batches} micro-batches per rank)"
        + (" after a ramp-up from {} by {} over {} samples".format(*train.rampup_batch_size)
           if train.rampup_batch_size else ""),
        f"plan: {train.train_iters} iterations x {train.global_batch_size} samples x {seq} "
        f"tokens = {tokens:,} tokens{' at most' if train.rampup_batch_size else ''}, "
        f"{flops * tokens:.3e} training FLOPs",
        config.performance.execution_path(model).summary(),
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def training_session(config: PretrainConfig, world_size: Optional[int] = None, *,
                     note: Optional[Callable[[str], None]] = None, announce: bool = False,
                     keep_process_group: bool = False) -> Iterator[Trainer]:
    """The one start-up sequence of a run and its shutdown.

    Resolves ``config`` for ``world_size`` processes (default: torchrun's WORLD_SIZE, else 1)
    before any process group or model exists, so a bad flag costs nothing; with ``announce``
    logs each note and the run summary; starts megatron-core (process groups, the CPU layer,
    seeds); builds the Trainer (model, optimizer, schedule; the tokenizer and the layout are
    the ones resolving made); and shuts megatron-core down on the way out, also after an error (``keep_process_group``: its parallel groups
    only, for several layouts in one world). ``note`` hears each setting that was changed
    (default: a warning, or a log line with ``announce``).
    """
    start_time = time.time()  # --exit-duration-in-mins counts from here, as in Megatron-LM
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if note is None and announce:
        note = lambda message: logger.info(f"note: {message}")  # noqa: E731
    run = resolve_run(config, world_size, note=note)
    if announce:
        logger.info(run_summary(run.config, run.layout))
    mcore.init(run.config.parallel, run.config.train.seed)
    try:
        yield Trainer(run, start_time=start_time)
    finally:
        mcore.shutdown(keep_process_group=keep_process_group)


def pretrain(config: PretrainConfig) -> TrainingResult:
    """Run a whole pretraining job (in every process of the torchrun world)."""
    with training_session(config, announce=True) as trainer:
        trainer.resume()
        return trainer.train()
