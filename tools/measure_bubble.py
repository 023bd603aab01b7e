#!/usr/bin/env python
"""Measure the pipeline bubble of the ponder schedule: idle time per stage over step time.

For each pipeline size P it starts P local processes (gloo, CPU), builds the pretraining
``Trainer`` with pipeline parallel size P and a fixed J (so every micro-batch runs V = K + J + 1
passes), and times training steps (forward and backward of all M micro-batches and passes,
gradient finalisation included; no optimizer step):

    step time T   all ranks start together (barrier) and the step ends when the last rank is
                  done (barrier); median over ``--steps`` after ``--warmup`` steps
    busy time     the stage's compute: CPU time of its main thread during the step (gloo waits
                  block without using CPU, and with one intra-op thread all compute runs on the
                  main thread), plus the simulated compute in ``--compute sleep`` mode
    idle          1 - busy / T, per stage

and prints it next to the theoretical idle fraction (P - 1) / (V M + P - 1) of the interleaved
schedule with equal-cost units (``megatron_ponder.parallel.bubble``), and the value without
interleaving passes, (P - 1) / (M + P - 1).

``--compute model`` (default) runs the real layers: meaningful when every rank has a core of its
own (otherwise T includes time spent waiting for a core). ``--compute sleep`` replaces each
stage's layers by a sleep of ``--forward-ms`` per pass forward and twice that backward (all the
rest, p2p, embedding, splice, loss, runs for real): it measures the schedule itself, with the
equal unit costs the formula assumes, even with more ranks than cores.

Examples:
  python tools/measure_bubble.py --pipeline-sizes 2 4
  python tools/measure_bubble.py --pipeline-sizes 2 4 --compute sleep --forward-ms 20
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.local_ranks import run_local_ranks  # noqa: E402
from megatron_ponder.training.synthetic_run import (  # noqa: E402
    add_synthetic_run_arguments, synthetic_run_flags)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-sizes", type=int, nargs="+", default=[2, 4])
    add_synthetic_run_arguments(parser, seq_length=128, micro_batches=8, jacobi_iterations=2)
    parser.add_argument("--compute", choices=("model", "sleep"), default="model")
    parser.add_argument("--forward-ms", type=float, default=20.0,
                        help="--compute sleep: simulated forward time of one pass on a stage")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pipeline size")
    args = parser.parse_args(argv)
    for size in args.pipeline_sizes:
        if size < 2 or args.num_layers % size:
            parser.error(f"pipeline size {size}: need >= 2 stages dividing --num-layers "
                         f"{args.num_layers}")
        if args.micro_batches % size:
            parser.error(f"--micro-batches {args.micro_batches} must be a multiple of the "
                         f"pipeline size {size}")
    return args


def pretrain_flags(args, pipeline_size):
    return synthetic_run_flags(args, args.warmup + args.steps, pipeline_parallel=pipeline_size)


def _simulate_stage_compute(stage, forward_s: float, counter: list) -> None:
    """Replace this stage's layers (``stack``) by sleeps: ``forward_s`` forward, twice that
    backward; ``counter[0]`` accumulates the simulated seconds."""
    import torch

    class SimulatedLayers(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden):
            time.sleep(forward_s)
            counter[0] += forward_s
            return hidden.clone()

        @staticmethod
        def backward(ctx, grad):
            time.sleep(2 * forward_s)
            counter[0] += 2 * forward_s
            return grad

    stage.stack = lambda hidden, num_slots, **_unused: SimulatedLayers.apply(hidden)


def measure_stage(args, world_size):
    """One rank: (pipeline stage, [(busy seconds, step seconds) per measured step])."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ponder.training.arguments import parse_args as parse_pretrain_args
    from megatron_ponder.training.trainer import training_session

    torch.set_num_threads(1)
    with training_session(parse_pretrain_args(pretrain_flags(args, world_size)),
                          world_size) as trainer:
        simulated = [0.0]
        if args.compute == "sleep":
            _simulate_stage_compute(trainer.model.module, args.forward_ms / 1000, simulated)
        data = trainer.training_data()
        samples = []
        for step in range(args.warmup + args.steps):
            dist.barrier()
            start_wall, start_cpu, start_sim = time.perf_counter(), time.thread_time(), \
                simulated[0]
            trainer.compute_gradients(data)
            busy = time.thread_time() - start_cpu + simulated[0] - start_sim
            dist.barrier()
            wall = time.perf_counter() - start_wall
            trainer.iteration += 1
            if step >= args.warmup:
                samples.append((busy, wall))
        stage = parallel_state.get_pipeline_model_parallel_rank()
    return stage, samples


def run_pipeline(size, args):
    """{stage: samples} of one P=``size`` pipeline (CPU ranks, whatever devices exist)."""
    stages = run_local_ranks(measure_stage, size, args, size, timeout=args.timeout,
                             extra_env={"CUDA_VISIBLE_DEVICES": ""})
    return dict(stages)


def report(size, results, args):
    from megatron_ponder.parallel.bubble import interleaved_idle_fraction, \
        one_chunk_idle_fraction

    passes = args.num_latent_thoughts + args.jacobi_iterations + 1
    theory = interleaved_idle_fraction(size, args.micro_batches, passes)
    plain = one_chunk_idle_fraction(size, args.micro_batches)
    print(f"P={size}  M={args.micro_batches}  V={passes} passes (K={args.num_latent_thoughts}, "
          f"J={args.jacobi_iterations})  compute={args.compute}  cores={os.cpu_count()}")
    print(f"  {'stage':>5}  {'busy ms':>9}  {'step ms':>9}  {'idle':>6}")
    idles = []
    for stage in sorted(results):
        busy = statistics.median(b for b, _ in results[stage])
        wall = statistics.median(w for _, w in results[stage])
        idles.append(1 - busy / wall)
        print(f"  {stage:>5}  {busy * 1e3:9.1f}  {wall * 1e3:9.1f}  {idles[-1]:6.1%}")
    print(f"  measured idle (mean over stages): {statistics.mean(idles):.1%}   theory "
          f"(P-1)/(V*M+P-1): {theory:.1%}   without pass interleaving (P-1)/(M+P-1): "
          f"{plain:.1%}")
    return statistics.mean(idles), theory


def main(argv=None):
    args = parse_args(argv)
    for size in args.pipeline_sizes:
        report(size, run_pipeline(size, args), args)


if __name__ == "__main__":
    main()
