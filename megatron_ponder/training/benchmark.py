"""Training-step benchmark (``tools/bench_train.py``): PonderLM-2 with K=1 and K=2 at fixed J
against vanilla of the same model, each in its own fresh process on whatever device is present
(CUDA if available, else CPU), through the real ``Trainer`` (forward and backward of every pass
and micro-batch, gradient reduction, optimizer step) on megatron-core's mock data.

Per configuration: ms per step (median of the timed steps; warm-up steps excluded; every
step's time is in the JSON), tokens/s,
TFLOP/s counted over all passes (``training/flops.py``), MFU where the device's bf16 peak is
known (``device_peak_tflops``; unknown on CPU), peak memory (CUDA: ``max_memory_allocated``
during the timed steps; CPU: the growth of the peak resident set during the timed steps above
the resident set before them, Linux's VmHWM reset through /proc/self/clear_refs), and the
PonderLM-2/vanilla step-time ratio next to the FLOP ratio.
"""

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

from megatron_ponder.local_ranks import run_local_ranks
from megatron_ponder.process_memory import peak_rss_growth_mib, reset_peak_rss, rss_kib

DEFAULT_VARIANTS: Tuple[Tuple[int, int], ...] = ((0, 0), (1, 2), (1, 3), (2, 2), (2, 3))


@dataclass
class BenchResult:
    name: str
    num_latent_thoughts: int
    jacobi_iterations: int
    device: str
    steps: int
    ms_per_step: float
    step_ms: List[float]
    tokens_per_s: float
    flops_per_step: float
    tflops: float
    mfu: Optional[float]
    peak_memory_mib: float
    memory_kind: str
    step_ratio: Optional[float] = None
    flop_ratio: Optional[float] = None
    top_kernels: Optional[List[dict]] = None
    """With ``--profile-top N``: the N kernels (GPU) or operators (CPU) that took the most
    time in one profiled step after the timed ones."""


def profile_one_step(step, top: int, cuda: bool) -> List[dict]:
    """Run ``step()`` under the torch profiler: the ``top`` kernels by self time (device time
    on GPUs, CPU time otherwise), each with its calls, milliseconds and share of the total."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as recorded:
        step()
        if cuda:
            import torch

            torch.cuda.synchronize()
    events = recorded.key_averages()
    attribute = "self_device_time_total" if cuda else "self_cpu_time_total"
    # On GPUs the kernels are the events with device time; CPU-side ops have none of their own.
    timed = [event for event in events if getattr(event, attribute, 0) > 0]
    total = sum(getattr(event, attribute) for event in timed) or 1.0
    timed.sort(key=lambda event: getattr(event, attribute), reverse=True)
    return [dict(name=event.key, calls=event.count,
                 ms=round(getattr(event, attribute) / 1e3, 3),
                 share=round(getattr(event, attribute) / total, 4)) for event in timed[:top]]


def bench_rank(flags: List[str], warmup: int, steps: int, threads: Optional[int],
               profile_top: int = 0) -> dict:
    """In a fresh process: time ``steps`` training steps after ``warmup`` ones (then profile
    one more with ``profile_top`` > 0)."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.flops import device_peak_tflops, step_flops
    from megatron_ponder.training.trainer import training_session

    torch.set_num_threads(threads or os.cpu_count() or 1)
    with training_session(parse_args(flags), 1) as trainer:
        config = trainer.config
        data = trainer.training_data()
        cuda = torch.cuda.is_available()

        def one_step():
            loss, _, _ = trainer.train_step(data)
            trainer.iteration += 1
            return loss

        for _ in range(warmup):
            one_step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            device = torch.cuda.get_device_name()
        else:
            device = f"CPU ({platform.processor() or platform.machine()}, " \
                     f"{torch.get_num_threads()} threads)"
        rss_before = rss_kib()
        has_rss = reset_peak_rss() and rss_before is not None
        flops = 0
        step_seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            one_step()  # the J of each micro-batch of the step: trainer.forward_step
            if cuda:
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - start)
            flops += step_flops(config.model, config.ponder, config.data.seq_length,
                                config.train.micro_batch_size,
                                trainer.forward_step.jacobi_used)
        # The median: a CPU step now and then takes twice as long (scheduler, allocator).
        seconds = statistics.median(step_seconds)
        if cuda:
            memory, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max allocated"
        elif has_rss:
            memory, kind = peak_rss_growth_mib(rss_before), "cpu peak RSS growth"
        else:
            memory, kind = float("nan"), "unavailable"
        peak = device_peak_tflops()
        top_kernels = profile_one_step(one_step, profile_top, cuda) if profile_top else None
        tflops = flops / steps / seconds / 1e12
        tokens = config.train.global_batch_size * config.data.seq_length
        return dict(device=device, ms_per_step=seconds * 1e3,
                    step_ms=[round(t * 1e3, 3) for t in step_seconds], tokens_per_s=tokens / seconds,
                    flops_per_step=flops / steps, tflops=tflops,
                    mfu=tflops / peak if peak else None, peak_memory_mib=memory,
                    memory_kind=kind, top_kernels=top_kernels)


def variant_flags(base: Sequence[str], thoughts: int, jacobi: int) -> List[str]:
    return list(base) + ["--num-latent-thoughts", str(thoughts),
                         "--jacobi-iterations", str(jacobi)]


def variant_name(thoughts: int, jacobi: int) -> str:
    return "vanilla" if thoughts == 0 else f"PonderLM-2 K={thoughts} J={jacobi}"


def run_benchmark(base_flags: Sequence[str], variants=DEFAULT_VARIANTS, warmup: int = 1,
                  steps: int = 3, threads: Optional[int] = None,
                  timeout: float = 3600, profile_top: int = 0) -> List[BenchResult]:
    """Every variant (K, J) in its own process; ratios against the K=0 variant."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need --steps >= 1 and --warmup-steps >= 0, got {steps}, {warmup}")
    if not variants:
        raise ValueError("no variants to benchmark")
    results = []
    for thoughts, jacobi in variants:
        if thoughts < 0 or jacobi < 0:
            raise ValueError(f"K and J must be >= 0, got K={thoughts} J={jacobi}")
        flags = variant_flags(base_flags, thoughts, jacobi)
        (measured,) = run_local_ranks(bench_rank, 1, flags, warmup, steps, threads,
                                      profile_top, timeout=timeout)
        results.append(BenchResult(name=variant_name(thoughts, jacobi),
                                   num_latent_thoughts=thoughts, jacobi_iterations=jacobi,
                                   steps=steps, **measured))
    vanilla = next((r for r in results if r.num_latent_thoughts == 0), None)
    if vanilla is not None:
        for result in results:
            result.step_ratio = result.ms_per_step / vanilla.ms_per_step
            result.flop_ratio = result.flops_per_step / vanilla.flops_per_step
    return results


def format_table(results: List[BenchResult]) -> str:
    lines = ["| model | tokens/s | ms/step | TFLOP/s | MFU | peak memory MiB | "
             "step time / vanilla | FLOPs / vanilla |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        ratio = (f"{r.step_ratio:.2f}x", f"{r.flop_ratio:.2f}x") if r.step_ratio else ("-", "-")
        lines.append(f"| {r.name} | {r.tokens_per_s:,.0f} | {r.ms_per_step:,.1f} | "
                     f"{r.tflops:.4f} | {mfu} | {r.peak_memory_mib:,.0f} | {ratio[0]} | "
                     f"{ratio[1]} |")
    for r in results:
        if r.top_kernels:
            lines += ["", f"top {len(r.top_kernels)} kernels of one {r.name} step:",
                      "| kernel | calls | ms | share |", "|---|---:|---:|---:|"]
            lines += [f"| {k['name'][:90]} | {k['calls']} | {k['ms']:.3f} | "
                      f"{100 * k['share']:.1f}% |" for k in r.top_kernels]
    return "\n".join(lines)


def write_json(path: str, results: List[BenchResult], base_flags: Sequence[str],
               warmup: int) -> None:
    import torch

    payload = {
        "command_flags": list(base_flags), "warmup_steps": warmup,
        "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": [asdict(r) for r in results],
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)


# Mock data and no evaluation; the model flags given on the command line come after these and
# override them (argparse keeps the last value).
BASE_FLAGS = ("--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1024",
              "--num-workers", "0", "--eval-iters", "0", "--log-interval", "1000000",
              "--seed", "1")


def _variant(text: str) -> Tuple[int, int]:
    try:
        thoughts, jacobi = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"a variant is K:J (e.g. 1:3), got {text!r}") from None
    return thoughts, jacobi


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="bench_train.py",
        description="Time training steps of PonderLM-2 (K=1, K=2 at J=2, 3) and vanilla of the "
                    "same model on this machine's device. Any other flags are "
                    "pretrain_ponder.py's (model, batch, --bf16, ...), e.g. --model-preset tiny "
                    "--micro-batch-size 4 --global-batch-size 8.")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="untimed steps before them (default: 1)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="K:J pairs (default: 0:0 1:2 1:3 2:2 2:3; 0:0 is vanilla)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: every core)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--profile-top", type=int, default=0, metavar="N",
                        help="profile one more step of each variant and list its N most "
                             "time-consuming kernels (default: no profile)")
    args, model_flags = parser.parse_known_args(argv)
    try:
        variants = tuple(_variant(v) for v in args.variants) if args.variants \
            else DEFAULT_VARIANTS
        total = args.warmup_steps + args.steps + (1 if args.profile_top else 0)
        base = list(BASE_FLAGS) + model_flags + ["--train-iters", str(total)]
        from megatron_ponder.training.arguments import parse_args

        parse_args(variant_flags(base, *variants[0]))  # bad model flags fail here, once
        if args.profile_top < 0:
            raise ValueError(f"--profile-top must be >= 0, got {args.profile_top}")
        results = run_benchmark(base, variants, args.warmup_steps, args.steps, args.threads,
                                profile_top=args.profile_top)
    except ValueError as error:
        parser.error(str(error))
    print(format_table(results))
    if args.json:
        write_json(args.json, results, base, args.warmup_steps)
        print(f"wrote {args.json}")
    return 0
