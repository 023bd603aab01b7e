#!/usr/bin/env python
"""Peak memory of one training step with and without activation recomputation (CPU).

For each ``--recompute-granularity`` setting (none, selective, full) it starts fresh processes
(gloo, CPU; ``--tensor-model-parallel-size`` x ``--pipeline-model-parallel-size`` ranks) that
build the pretraining ``Trainer``, then run the forward and backward of one step (all
micro-batches and passes; no optimizer step) and report, per rank, how far the resident set
grew during that step above its size just before it: Linux's peak-RSS counter (VmHWM) is reset
through /proc/self/clear_refs right before the step. Every setting starts from the same state
(a fresh process, the same weights and batch) and the step's losses are printed too, so one can
see that recomputation changes memory, not results.

Example:
  python tools/measure_recompute_memory.py                          # one process, defaults
  python tools/measure_recompute_memory.py --pipeline-model-parallel-size 2
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.local_ranks import run_local_ranks  # noqa: E402
from megatron_ponder.process_memory import peak_rss_growth_mib, reset_peak_rss, rss_kib  # noqa: E402
from megatron_ponder.training.synthetic_run import (  # noqa: E402
    add_synthetic_run_arguments, synthetic_run_flags)
SETTINGS = ("none", "selective", "full")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_synthetic_run_arguments(parser, seq_length=256, micro_batches=2, jacobi_iterations=3)
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--timeout", type=float, default=900)
    return parser.parse_args(argv)


def pretrain_flags(args, setting):
    flags = synthetic_run_flags(args, 1, args.tensor_model_parallel_size,
                                args.pipeline_model_parallel_size)
    if setting != "none":
        flags += ["--recompute-granularity", setting]
    return flags


def measure_rank(flags, world_size):
    """One rank: (MiB the resident set grew during one step, step seconds, loss or None)."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    from megatron_ponder.training.arguments import parse_args as parse_pretrain_args
    from megatron_ponder.training.step import reduce_reported_loss
    from megatron_ponder.training.trainer import training_session

    torch.set_num_threads(1)
    with training_session(parse_pretrain_args(flags), world_size) as trainer:
        data = trainer.training_data()
        dist.barrier()
        before = rss_kib()
        if not reset_peak_rss() or before is None:
            raise RuntimeError("needs Linux's /proc/self/status and /proc/self/clear_refs")
        start = time.perf_counter()
        loss = reduce_reported_loss(trainer.compute_gradients(data))
        seconds = time.perf_counter() - start
        growth = peak_rss_growth_mib(before)
    return growth, seconds, loss


def run_setting(args, setting):
    """{rank: (grown MiB, seconds, loss)} for one recompute setting, in fresh CPU processes."""
    world = args.tensor_model_parallel_size * args.pipeline_model_parallel_size
    results = run_local_ranks(measure_rank, world, pretrain_flags(args, setting), world,
                              timeout=args.timeout, extra_env={"CUDA_VISIBLE_DEVICES": ""})
    return dict(enumerate(results))


def main(argv=None):
    args = parse_args(argv)
    passes = (args.num_latent_thoughts + args.jacobi_iterations + 1
              if args.num_latent_thoughts else 1)
    print(f"{args.arch}: {args.num_layers} layers, H={args.hidden_size}, "
          f"L={args.seq_length}, micro-batch {args.micro_batch_size} x {args.micro_batches}, "
          f"K={args.num_latent_thoughts}, J={args.jacobi_iterations} ({passes} passes), "
          f"TP={args.tensor_model_parallel_size}, PP={args.pipeline_model_parallel_size}")
    print(f"  {'recompute':>10}  {'rank':>4}  {'peak step MiB':>13}  {'step s':>7}  {'loss':>10}")
    for setting in args.settings:
        for rank, (grown, seconds, loss) in sorted(run_setting(args, setting).items()):
            loss_text = f"{loss:.6f}" if loss is not None else "-"
            print(f"  {setting:>10}  {rank:>4}  {grown:13.1f}  {seconds:7.2f}  {loss_text:>10}")


if __name__ == "__main__":
    main()
