"""Megatron-LM-format log lines (so existing log parsers and tools/plot_loss.py work), and the
same scalars to TensorBoard (--tensorboard-dir) and Weights & Biases (--wandb-project)."""

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from megatron_ponder.training.flops import device_peak_tflops


def _timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float) -> str:
    """``1d 02:03:04`` / ``02:03:04``: the time left at the last interval's pace."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def memory_megabytes() -> float:
    """Peak GPU memory allocated by torch, or this process's resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


@dataclass
class WandbSettings:
    """--wandb-* flags (Megatron-LM's): where a run's scalars go in Weights & Biases."""

    project: str
    exp_name: Optional[str] = None
    entity: Optional[str] = None
    save_dir: str = "wandb"
    config: Dict[str, Any] = field(default_factory=dict)
    """The run's full configuration, shown with the run."""


class _TensorBoardSink:
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=log_dir)

    def log(self, scalars: Dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandbSink:
    def __init__(self, settings: WandbSettings):
        import wandb  # validated at startup: the flag needs the package

        os.makedirs(settings.save_dir, exist_ok=True)
        self.run = wandb.init(project=settings.project, name=settings.exp_name,
                              entity=settings.entity, dir=settings.save_dir,
                              config=settings.config)

    def log(self, scalars: Dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class TrainingLogger:
    """Accumulates per-step metrics and prints one line every ``log_interval`` steps, and one
    after the first step of the process (so that a start shows its pace at once); the logging
    rank (``enabled``) also sends the scalars to TensorBoard and W&B when asked."""

    def __init__(self, train_iters: int, log_interval: int, world_size: int,
                 global_batch_size: int, seq_length: int, enabled: bool,
                 tensorboard_dir: Optional[str] = None, wandb: Optional[WandbSettings] = None):
        self.train_iters = train_iters
        self.log_interval = log_interval
        self.world_size = world_size
        self.global_batch_size = global_batch_size
        self.seq_length = seq_length
        self.enabled = enabled
        self.peak_tflops = device_peak_tflops()
        self.sinks = []
        self.logged_any = False
        if enabled and tensorboard_dir:
            self.sinks.append(_TensorBoardSink(tensorboard_dir))
        if enabled and wandb is not None:
            self.sinks.append(_WandbSink(wandb))
        self._reset()

    def _send(self, scalars: Dict[str, Optional[float]], step: int) -> None:
        present = {name: value for name, value in scalars.items() if value is not None}
        for sink in self.sinks:
            sink.log(present, step)

    def _reset(self):
        self.seconds = 0.0
        self.flops = 0.0
        self.losses: List[float] = []
        self.jacobi: List[int] = []
        self.skipped = 0
        self.nan = 0
        self.steps = 0

    def record_step(self, seconds: float, flops: float, loss: Optional[float],
                    jacobi: List[int], skipped: bool, nan: bool = False) -> None:
        """``nan``: the step was skipped for NaN/inf in its loss or gradients (on any rank);
        counted, like a non-finite loss, as a nan iteration and left out of the mean loss."""
        self.steps += 1
        self.seconds += seconds
        self.flops += flops
        self.jacobi.extend(jacobi)
        self.skipped += int(skipped)
        if nan or (loss is not None and not math.isfinite(loss)):
            self.nan += 1
        elif loss is not None:
            self.losses.append(loss)

    def is_log_iteration(self, iteration: int) -> bool:
        return (not self.logged_any or iteration % self.log_interval == 0
                or iteration == self.train_iters)

    def maybe_log(self, iteration: int, consumed_samples: int, lr: float,
                  grad_norm: Optional[float], loss_scale: float = 1.0,
                  params_norm: Optional[float] = None) -> None:
        if not self.is_log_iteration(iteration):
            return
        self.logged_any = True
        if self.enabled and self.steps:
            seconds = self.seconds / self.steps
            tflops = self.flops / self.steps / seconds / self.world_size / 1e12
            tokens_per_second = self.global_batch_size * self.seq_length / seconds
            loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
            parts = [
                f" [{_timestamp()}] iteration {iteration:8d}/{self.train_iters:8d}",
                f"consumed samples: {consumed_samples:12d}",
                f"consumed tokens: {consumed_samples * self.seq_length:14d}",
                f"elapsed time per iteration (ms): {seconds * 1000:.1f}",
                f"ETA: {format_duration(seconds * (self.train_iters - iteration))}",
                f"throughput per GPU (TFLOP/s/GPU): {tflops:.3f}",
                f"tokens per second per GPU: {tokens_per_second / self.world_size:.1f}",
            ]
            if self.peak_tflops:
                parts.append(f"MFU: {100 * tflops / self.peak_tflops:.2f}%")
            parts += [
                f"learning rate: {lr:.6E}",
                f"global batch size: {self.global_batch_size:5d}",
                f"lm loss: {loss:.6E}",
                f"loss scale: {loss_scale:.1f}",
                f"grad norm: {grad_norm:.3f}" if grad_norm is not None else "grad norm: nan",
            ]
            if params_norm is not None:
                parts.append(f"params norm: {params_norm:.3f}")
            parts += [
                f"jacobi iterations: {sum(self.jacobi) / max(len(self.jacobi), 1):.2f}",
                f"number of skipped iterations: {self.skipped:3d}",
                f"number of nan iterations: {self.nan:3d}",
                f"mem (MB): {memory_megabytes():.0f}",
            ]
            print(" | ".join(parts) + " |", flush=True)
            self._send({"lm loss": loss, "learning-rate": lr, "grad-norm": grad_norm,
                        "loss-scale": loss_scale, "params-norm": params_norm,
                        "tflops-per-gpu": tflops, "tokens-per-second": tokens_per_second},
                       iteration)
        self._reset()

    def log_validation(self, iteration: int, loss: float) -> None:
        if not self.enabled:
            return
        ppl = math.exp(min(20.0, loss))
        line = (f" validation loss at iteration {iteration} | lm loss value: {loss:.6E} | "
                f"lm loss PPL: {ppl:.6E} | ")
        bar = "-" * (len(line) + 1)
        print(f"{bar}\n{line}\n{bar}", flush=True)
        self._send({"lm loss validation": loss}, iteration)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
