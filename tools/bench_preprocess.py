#!/usr/bin/env python3
"""Measure tools/preprocess_data.py on a large generated .jsonl.zst: tokens/s and peak memory.

    python tools/bench_preprocess.py --size-gb 2 --workers 1 2 --work-dir /tmp/bench_pre

Generates ``<work-dir>/input.jsonl.zst`` (about ``--size-gb`` GB of JSONL text before
compression) by repeating the documents of ``--source`` (default: the default corpus's
training JSONL) in a seeded random order, then runs the tool once per ``--workers`` value and
prints, per run, the tool's own summary line (documents, tokens, tokens/s), the peak of the
summed resident memory of the tool and all its worker processes (sampled every 0.2 s; also per
fifth of the run, to show that it stays flat), wall and CPU seconds and tokens per CPU second
(which, unlike tokens/s, does not drop when other programs share the CPUs).
``--keep`` keeps the input and outputs; by default they are deleted after measuring.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TOOL = os.path.join(REPO, "tools", "preprocess_data.py")
DEFAULT_SOURCE = os.path.join(REPO, "data", "default", "jsonl", "train.jsonl")


def generate(path: str, source: str, size_bytes: int, seed: int = 0) -> int:
    """Write about ``size_bytes`` of JSONL (uncompressed) to ``path`` as zstd; returns the
    uncompressed byte count."""
    import zstandard

    with open(source, "rb") as handle:
        lines = [line if line.endswith(b"\n") else line + b"\n" for line in handle if line.strip()]
    rng = random.Random(seed)
    written = 0
    with open(path, "wb") as raw:
        with zstandard.ZstdCompressor(level=3).stream_writer(raw) as writer:
            while written < size_bytes:
                rng.shuffle(lines)
                for line in lines:
                    writer.write(line)
                    written += len(line)
                    if written >= size_bytes:
                        break
    return written


def measure(argv, interval: float = 0.2):
    """Run ``argv``; (return code, stdout, stderr, summed RSS of its process tree sampled every
    ``interval`` s, CPU seconds of the whole tree)."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(process.pid)
    samples = []
    while process.poll() is None:
        total = 0
        try:
            for member in [root] + root.children(recursive=True):
                try:
                    total += member.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        samples.append(total)
        time.sleep(interval)
    out, err = process.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return process.returncode, out.decode(), err.decode(), samples, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0,
                        help="uncompressed JSONL size to generate (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="JSONL whose documents are repeated (default: the default corpus)")
    parser.add_argument("--work-dir", default="/tmp/bench_preprocess")
    parser.add_argument("--keep", action="store_true", help="keep the input and outputs")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.source):
        parser.error(f"--source {args.source} not found (python tools/prepare_default_corpus.py "
                     "builds the default one)")
    os.makedirs(args.work_dir, exist_ok=True)
    source = os.path.join(args.work_dir, "input.jsonl.zst")
    try:
        if not os.path.exists(source):
            start = time.monotonic()
            size = generate(source, args.source, int(args.size_gb * 1e9))
            print(f"generated {source}: {size / 1e9:.2f} GB of JSONL, "
                  f"{os.path.getsize(source) / 1e9:.2f} GB compressed, "
                  f"{time.monotonic() - start:.0f} s", flush=True)
        for workers in args.workers:
            prefix = os.path.join(args.work_dir, f"out_w{workers}")
            start = time.monotonic()
            status, out, err, samples, cpu = measure([
                sys.executable, TOOL, "--input", source, "--output-prefix", prefix,
                "--append-eod", "--workers", str(workers), "--partitions", str(args.partitions),
                "--log-interval", "1000000000", "--overwrite"])
            if status != 0:
                print(err, file=sys.stderr)
                return status
            wall = time.monotonic() - start
            summary = out.strip().splitlines()[-1]
            tokens = int(summary.split("tokens: ")[1].split(" ")[0])
            # Peak memory over each fifth of the run: flat means the input size does not matter.
            fifths = [round(max(samples[i * len(samples) // 5:(i + 1) * len(samples) // 5]
                                or [0]) / 2 ** 20) for i in range(5)]
            print(json.dumps({"workers": workers, "partitions": args.partitions,
                              "peak_rss_mib": round(max(samples or [0]) / 2 ** 20),
                              "peak_rss_mib_per_fifth_of_run": fifths,
                              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                              "tokens_per_cpu_s": round(tokens / max(cpu, 1e-9)),
                              "summary": summary}), flush=True)
            for path in (prefix + "_text_document.bin", prefix + "_text_document.idx"):
                if os.path.exists(path) and not args.keep:
                    os.remove(path)
    finally:
        if not args.keep:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
