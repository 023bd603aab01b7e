#!/usr/bin/env python
"""Microbenchmark of the splice op: every available backend, forward and backward.

For each shape (s tokens, b micro-batch, h hidden, K latent thoughts) it times
``megatron_ponder.ops.splice`` per backend, checks the result equals the torch reference bit for
bit, and reports time, effective bandwidth (bytes the op must move / time), that bandwidth as a
percentage of the device's measured copy bandwidth (``dst.copy_(src)`` of a large buffer, read +
write), and speedup over the torch reference. Results are printed as a table and written as JSON.

Bytes counted (X = s * b * h * element size, N = K + 1 slots, P = slots of prev):
  forward:  read emb X + read the N - 1 used slots of prev + write out N X  = 2 N X
  backward: read grad_out slots 1..N-1 + write grad_prev P X                = (N - 1 + P) X
(grad_emb is a view of grad_out's slot 0 in every backend, the torch reference included).
P = N for a Jacobi/final pass (``--variant jacobi``, the common case), N - 1 for a growth pass.

"backward" is autograd's backward of the op plus making grad_prev contiguous (what its consumer,
the previous pass's final-norm backward, needs; a no-op except for the torch reference with one
prev slot, which returns a strided view and so would defer the copy out of the measurement).

GPU: CUDA events around each call, median of ``--iters`` runs after ``--warmup``, with the L2
cache flushed before each timed call (``--no-flush`` to keep it) so small shapes are not timed
from cache. CPU: ``time.perf_counter`` medians; the Triton backend is skipped there (it runs only
in the interpreter, ~1000x slower, which would time the interpreter, not the kernel).

Examples:
  python tools/bench_kernels.py                                  # default shapes, bf16, GPU
  python tools/bench_kernels.py --quick                          # one small shape (CPU smoke)
  python tools/bench_kernels.py --shapes 8192x8x4096x3 --variant both --json out.json
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch

from megatron_ponder.devices import default_device
from megatron_ponder.ops import backend_unavailable_reason, splice, splice_reference

# Realistic PonderLM-2 shapes: Llama-410M/1.4B and Pythia hidden sizes, local sequence lengths
# of one rank, micro-batches 1-8, K = 1-3.
DEFAULT_SHAPES = [
    (2048, 1, 1024, 1), (2048, 8, 1024, 1), (2048, 8, 2048, 1), (2048, 8, 4096, 1),
    (4096, 4, 2048, 2), (4096, 8, 2048, 3), (8192, 1, 4096, 1), (8192, 2, 4096, 3),
    (8192, 8, 2048, 1), (8192, 8, 4096, 3),
]
FULL_GRID = list(itertools.product((2048, 4096, 8192), (1, 2, 4, 8), (1024, 2048, 4096), (1, 2, 3)))
QUICK_SHAPES = [(2048, 1, 1024, 1)]
# The goals are stated for large shapes: at least 64 Mi elements per slot plane
# (for example s=8192, b=8, h=1024), where launch overhead and caches no longer matter.
LARGE_ELEMENTS = 64 * 2**20
GOAL_PCT_COPY = 85.0
GOAL_SPEEDUP = 3.0
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shape(text: str):
    try:
        s, b, h, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not SxBxHxK, e.g. 4096x4x2048x2")
    if min(s, b, h, k) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: all of s, b, h, K must be >= 1")
    return s, b, h, k


class Timer:
    """Median wall time of a callable: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device, warmup: int, iters: int, flush: bool):
        self.device, self.warmup, self.iters = device, warmup, iters
        # Writing 256 MiB evicts the L2 (50-60 MB on H100/H200) before each timed call.
        self.flush_buf = (torch.empty(64 * 2**20, dtype=torch.float32, device=device)
                          if flush and device.type == "cuda" else None)

    def __call__(self, fn) -> float:
        """Median milliseconds."""
        for _ in range(self.warmup):
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            pairs = []
            for _ in range(self.iters):
                if self.flush_buf is not None:
                    self.flush_buf.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize(self.device)
            return statistics.median(s.elapsed_time(e) for s, e in pairs)
        times = []
        for _ in range(self.iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_bandwidth_gbps(device: torch.device, timer: Timer) -> float:
    """Read + write bandwidth of a plain device copy of a buffer far larger than any cache."""
    nbytes = 2**30 if device.type == "cuda" else 2**28
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def backend_status(device: torch.device, requested):
    """(backends to run, {skipped backend: reason})."""
    runnable, skipped = [], {}
    for name in requested:
        if name == "torch":
            runnable.append(name)
        elif name == "triton" and device.type == "cpu":
            skipped[name] = ("CPU: Triton runs only in its interpreter (~1000x slower than "
                             "torch), which would time the interpreter, not the kernel")
        elif name == "cuda" and device.type != "cuda":
            reason = backend_unavailable_reason(name)
            skipped[name] = "no CUDA device" + (f"; also {reason}" if reason else "")
        else:
            reason = backend_unavailable_reason(name)
            if reason:
                skipped[name] = reason
            else:
                runnable.append(name)
    return runnable, skipped


def bench_shape(shape, variant, dtype, device, backends, timer, copy_gbps):
    s, b, h, k = shape
    num_slots = k + 1
    prev_slots = num_slots if variant == "jacobi" else num_slots - 1
    gen = torch.Generator(device=device).manual_seed(0)
    emb = torch.randn(s, b, h, dtype=dtype, device=device, generator=gen)
    prev = torch.randn(s * prev_slots, b, h, dtype=dtype, device=device, generator=gen)
    grad = torch.randn(s * num_slots, b, h, dtype=dtype, device=device, generator=gen)
    plane = s * b * h * emb.element_size()
    moved = {"forward": 2 * num_slots * plane, "backward": (num_slots - 1 + prev_slots) * plane}

    emb_g, prev_g = emb.detach().requires_grad_(), prev.detach().requires_grad_()
    expected_out = splice_reference(emb, prev, num_slots)
    expected_grads = torch.autograd.grad(splice_reference(emb_g, prev_g, num_slots),
                                         (emb_g, prev_g), grad)
    rows = []
    for name in backends:
        # Checked before timing: a fast wrong kernel must not produce a number.
        out = splice(emb, prev, num_slots, backend=name)
        graph_out = splice(emb_g, prev_g, num_slots, backend=name)
        grads = torch.autograd.grad(graph_out, (emb_g, prev_g), grad, retain_graph=True)
        exact = torch.equal(out, expected_out) and all(
            torch.equal(a, e) for a, e in zip(grads, expected_grads))
        del out
        def backward():
            # Autograd's own work (the torch reference's slice/cat backward) is part of the cost,
            # and so is a contiguous grad_prev: its consumer, the previous pass's final-norm
            # backward, needs one, and for prev_slots == 1 the reference returns a strided view
            # that would otherwise hide the copy. A no-op for the fused backends.
            _, grad_prev = torch.autograd.grad(graph_out, (emb_g, prev_g), grad, retain_graph=True)
            return grad_prev.contiguous()

        times = {
            "forward": timer(lambda: splice(emb, prev, num_slots, backend=name)),
            "backward": timer(backward),
        }
        del graph_out, grads
        for direction, ms in times.items():
            gbps = moved[direction] / (ms * 1e-3) / 1e9
            rows.append({
                "s": s, "b": b, "h": h, "K": k, "variant": variant, "dtype": str(dtype),
                "backend": name, "direction": direction, "ms": ms, "bytes": moved[direction],
                "gbps": gbps, "pct_copy": 100.0 * gbps / copy_gbps, "exact": exact,
                "large": s * b * h >= LARGE_ELEMENTS,
            })
    for row in rows:
        base = next(r for r in rows if r["backend"] == "torch" and r["direction"] == row["direction"])
        row["speedup_vs_torch"] = base["ms"] / row["ms"]
    return rows


def print_table(rows):
    header = (f"{'s':>5} {'b':>2} {'h':>5} {'K':>1} {'variant':>7} {'backend':>7} {'dir':>8} "
              f"{'ms':>9} {'GB/s':>8} {'%copy':>6} {'x torch':>7} {'exact':>5}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['s']:>5} {r['b']:>2} {r['h']:>5} {r['K']:>1} {r['variant']:>7} "
              f"{r['backend']:>7} {r['direction']:>8} {r['ms']:>9.3f} {r['gbps']:>8.1f} "
              f"{r['pct_copy']:>6.1f} {r['speedup_vs_torch']:>7.2f} {str(r['exact']):>5}")


def goal_summary(rows):
    """Per fused backend and direction: worst % of copy bandwidth and speedup on large shapes."""
    summary = {}
    for r in rows:
        if r["backend"] == "torch" or not r["large"]:
            continue
        key = f"{r['backend']}/{r['direction']}"
        entry = summary.setdefault(key, {"min_pct_copy": float("inf"), "min_speedup": float("inf")})
        entry["min_pct_copy"] = min(entry["min_pct_copy"], r["pct_copy"])
        entry["min_speedup"] = min(entry["min_speedup"], r["speedup_vs_torch"])
    for entry in summary.values():
        entry["meets_goal"] = (entry["min_pct_copy"] >= GOAL_PCT_COPY
                               and entry["min_speedup"] >= GOAL_SPEEDUP)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, metavar="SxBxHxK",
                        help="shapes to run (default: a realistic set of 10)")
    parser.add_argument("--full", action="store_true", help="the full s x b x h x K grid (108)")
    parser.add_argument("--quick", action="store_true",
                        help="one small shape and few iterations (CPU smoke run)")
    parser.add_argument("--variant", choices=("jacobi", "growth", "both"), default="jacobi")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--backends", default="torch,triton,cuda",
                        help="comma-separated subset of torch,triton,cuda")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--iters", type=int, default=None, help="timed runs (GPU 100, CPU 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs (GPU 10, CPU 2)")
    parser.add_argument("--no-flush", action="store_true", help="do not flush L2 between runs")
    parser.add_argument("--json", default=os.path.join("runs", "bench_kernels.json"),
                        help="where to write results (default: runs/bench_kernels.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device) if args.device else default_device()
    on_gpu = device.type == "cuda"
    requested = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(requested) - {"torch", "triton", "cuda"}
    if unknown or "torch" not in requested:
        parser.error(f"--backends must name torch (the baseline) plus any of triton,cuda; "
                     f"got {args.backends!r}")
    shapes = args.shapes or (QUICK_SHAPES if args.quick else FULL_GRID if args.full
                             else DEFAULT_SHAPES)
    iters = args.iters or (3 if args.quick else 100 if on_gpu else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10 if on_gpu else 2)
    variants = ("jacobi", "growth") if args.variant == "both" else (args.variant,)
    dtype = DTYPES[args.dtype]

    backends, skipped = backend_status(device, requested)
    timer = Timer(device, warmup, iters, flush=not args.no_flush)
    copy_gbps = copy_bandwidth_gbps(device, timer)
    device_name = (torch.cuda.get_device_name(device) if on_gpu
                   else f"CPU ({platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads)")
    print(f"device: {device_name} | dtype: {args.dtype} | iters: {iters} (median) | "
          f"copy bandwidth: {copy_gbps:.1f} GB/s")
    for name, reason in skipped.items():
        print(f"skipped backend {name}: {reason}")

    rows = []
    for shape, variant in itertools.product(shapes, variants):
        rows += bench_shape(shape, variant, dtype, device, backends, timer, copy_gbps)
        if on_gpu:
            torch.cuda.empty_cache()
    print_table(rows)
    summary = goal_summary(rows)
    for key, entry in summary.items():
        print(f"goal (large shapes) {key}: min {entry['min_pct_copy']:.1f}% of copy bandwidth "
              f"(goal {GOAL_PCT_COPY:.0f}%), min {entry['min_speedup']:.2f}x torch (goal "
              f"{GOAL_SPEEDUP:.0f}x): {'MET' if entry['meets_goal'] else 'NOT MET'}")
    if not any(r["large"] for r in rows):
        print("goal: not assessed (no large shape in this run)")
    if not all(r["exact"] for r in rows):
        print("ERROR: a backend's result differs from the torch reference (column 'exact')")

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {
        "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None
                                                                else list(argv))),
        "device": device_name, "torch": torch.__version__, "triton": triton_version,
        "dtype": args.dtype, "iters": iters, "warmup": warmup, "l2_flush": timer.flush_buf is not None,
        "copy_bandwidth_gbps": copy_gbps, "skipped": skipped, "goals": {
            "pct_copy": GOAL_PCT_COPY, "speedup_vs_torch": GOAL_SPEEDUP,
            "large_elements": LARGE_ELEMENTS, "summary": summary},
        "rows": rows,
    }
    if os.path.dirname(args.json):
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.json}")
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
