#!/usr/bin/env python
"""Time the two inference engines on the same random-weight model: prefill, decode, scoring.

The engines: ``megatron`` (``from_pretrained(folder, engine="megatron")``: the megatron-core
model with ``megatron_ponder/inference``) and ``transformers`` (``from_pretrained(folder)``:
the transformers-native ``PonderLM2ForCausalLM`` of ``megatron_ponder/hf/remote``, the class
``AutoModelForCausalLM`` loads with ``trust_remote_code=True``). For each K the tool builds a
model from a seed (no download), exports it to a temporary folder, loads it with both engines
and, before any timing, checks that they agree: the same greedy tokens, and scoring logits and
loss within ``--atol`` (a fast wrong engine must not produce a number; exit status 1).

What is timed (float32, ``torch.inference_mode``, greedy, KV cache):
  prefill   ``generate`` of 1 new token from ``--batch`` prompts of ``--prompt-length``
            tokens: all passes over the prompts plus one next-token choice.
            prefill tokens/s = batch * prompt length / that time.
  decode    ``generate`` of ``--new-tokens`` N tokens minus the prefill time: the N - 1 tokens
            fed back one at a time (K+1 single-slot steps each).
            decode tokens/s = batch * (N - 1) / (time(N) - time(1)).
  scoring   the forward over ``--batch`` sequences of ``--score-length`` tokens returning
            logits and loss. scoring tokens/s = batch * score length / that time.
Each is timed ``--repeats`` times after ``--warmup`` untimed runs, on two clocks: wall time and
the process's CPU time (all threads). The engines' runs alternate (A B, then B A, ...) so that
other load on the machine hits both alike. The tables give medians (decode: the median over
repeats of generate - prefill of the same repeat) and, for wall time, the fastest run of each
(decode: fastest generate - fastest prefill), which is the better estimate where other
programs take the cores in bursts; every time is in the JSON.

The megatron engine runs inside megatron-core's CPU layer (``mcore.cuda_as_cpu``: on a
machine without CUDA, ``from_pretrained(engine="megatron")`` switches it on and it sees every
torch call), as it always does there; the transformers engine outside it, as in a process that
never loads megatron-core (``--native-cpu-layer``: inside it too).

Examples:
  python tools/bench_inference.py                                    # llama, small, K = 0 1 2
  python tools/bench_inference.py --size medium --thoughts 1 --repeats 3
  python tools/bench_inference.py --arch gpt_neox --output runs/bench_inference_neox.json
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch

from megatron_ponder import mcore
from megatron_ponder.mcore import cpu
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import from_pretrained, save_pretrained
from megatron_ponder.model import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {
    "tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256),
    "small": dict(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_attention_heads=8, vocab_size=8192),
}
MEASURES = ("prefill", "generate", "score")
CLOCKS = ("wall", "cpu")
RATES = ("prefill_tokens_per_s", "decode_tokens_per_s", "score_tokens_per_s")


class MegatronEngine:
    """``from_pretrained(folder, engine="megatron")``: PonderForCausalLM, run as megatron-core
    runs on a machine without CUDA: inside the CPU layer (``mcore.cuda_as_cpu``), which
    ``from_pretrained`` switches on for the whole process and which sees every torch call."""

    name = "megatron"

    def __init__(self, folder: str):
        self.model = from_pretrained(folder, engine="megatron")
        self.conditions = mcore.cuda_as_cpu

    def generate(self, ids, mask, new_tokens: int) -> torch.Tensor:
        return self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens)

    def score(self, ids):
        out = self.model(ids, labels=ids)
        return out.logits, out.loss


class TransformersEngine:
    """``from_pretrained(folder)``: the transformers-native PonderLM2ForCausalLM."""

    name = "transformers"

    def __init__(self, folder: str, cpu_layer: bool = False):
        self.model = from_pretrained(folder)
        # As in a process that never loads megatron-core, unless asked otherwise.
        self.conditions = mcore.cuda_as_cpu if cpu_layer else contextlib.nullcontext
        # Random weights may pick the end-of-text id; no row may stop early.
        self.model.generation_config.eos_token_id = None

    def generate(self, ids, mask, new_tokens: int) -> torch.Tensor:
        return self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                   do_sample=False, pad_token_id=0)

    def score(self, ids):
        out = self.model(ids, labels=ids)
        return out.logits, out.loss


@contextlib.contextmanager
def outside_cpu_layer():
    """megatron-core's CPU layer off inside the block (``mcore.init`` switches it on for the
    whole process), back as it was after it; each engine's ``conditions`` switch it on where
    that engine needs it."""
    was_off = cpu.activate()
    cpu.deactivate()
    try:
        yield
    finally:
        if not was_off:
            cpu.activate()


def build_folder(folder: str, arch: str, size: str, thoughts: int, jacobi: int, seed: int):
    """A random model of ``size`` (K = ``thoughts``, J = ``jacobi``) exported to ``folder``."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, **SIZES[size]),
                        PonderConfig(num_latent_thoughts=thoughts, vanilla=thoughts == 0,
                                     jacobi_iterations=jacobi))
    save_pretrained(model.eval(), folder)


def make_inputs(args, vocab_size: int):
    generator = torch.Generator().manual_seed(args.seed + 1)
    prompts = torch.randint(0, vocab_size, (args.batch, args.prompt_length), generator=generator)
    scored = torch.randint(0, vocab_size, (args.batch, args.score_length), generator=generator)
    return prompts, torch.ones_like(prompts), scored


def check_agreement(engines, prompts, mask, scored, new_tokens: int, atol: float) -> dict:
    """Greedy tokens equal and scoring logits / loss within ``atol`` (first engine as the
    reference)."""
    tokens, scores = [], []
    for engine in engines:
        with engine.conditions():
            tokens.append(engine.generate(prompts, mask, new_tokens))
            scores.append(engine.score(scored))
    (logits_a, loss_a), (logits_b, loss_b) = scores
    expected_shape = (prompts.shape[0], prompts.shape[1] + new_tokens)
    logit_diff = float((logits_a - logits_b).abs().max())
    loss_diff = float((loss_a - loss_b).abs())
    check = {
        "greedy_tokens_equal": all(tuple(t.shape) == expected_shape for t in tokens)
        and torch.equal(tokens[0], tokens[1]),
        "greedy_tokens_compared": expected_shape[0] * new_tokens,
        "max_abs_logit_diff": logit_diff, "abs_loss_diff": loss_diff, "atol": atol,
    }
    check["passed"] = (check["greedy_tokens_equal"] and logit_diff <= atol
                       and loss_diff <= atol)
    return check


def timed(engine, fn):
    """(wall, CPU) seconds of ``fn(engine)`` in the engine's conditions (entered outside the
    clocks). CPU time is this process's, all threads: less sensitive than wall time to other
    programs taking the cores."""
    with engine.conditions():
        wall, cpu_time = time.perf_counter(), time.process_time()
        fn(engine)
        return time.perf_counter() - wall, time.process_time() - cpu_time


def measure(engines, prompts, mask, scored, args) -> dict:
    """{engine: {clock: {measure: [seconds per repeat]}}}: in each repeat every engine runs
    prefill, generate and score back to back (so generate - prefill of one repeat saw the
    same load), the engines' order alternating between repeats."""
    calls = {
        "prefill": lambda e: e.generate(prompts, mask, 1),
        "generate": lambda e: e.generate(prompts, mask, args.new_tokens),
        "score": lambda e: e.score(scored),
    }
    for _ in range(args.warmup):
        for engine in engines:
            for measure_name in MEASURES:
                timed(engine, calls[measure_name])
    times = {e.name: {clock: {m: [] for m in MEASURES} for clock in CLOCKS} for e in engines}
    for repeat in range(args.repeats):
        for engine in (engines if repeat % 2 == 0 else engines[::-1]):
            for measure_name in MEASURES:
                for clock, seconds in zip(CLOCKS, timed(engine, calls[measure_name])):
                    times[engine.name][clock][measure_name].append(seconds)
    return times


def summarize(times: dict, args, best: bool = False) -> dict:
    """Seconds and tokens/s of one engine's timings on one clock: medians (decode: the median
    over repeats of generate - prefill), or with ``best`` the fastest run of each (decode:
    fastest generate - fastest prefill)."""
    if best:
        prefill, score = min(times["prefill"]), min(times["score"])
        decode = min(times["generate"]) - prefill
    else:
        prefill, score = statistics.median(times["prefill"]), statistics.median(times["score"])
        decode = statistics.median(g - p for g, p in zip(times["generate"], times["prefill"]))
    decoded = args.batch * (args.new_tokens - 1)
    return {
        "prefill_s": prefill, "decode_s": decode, "score_s": score,
        "prefill_tokens_per_s": args.batch * args.prompt_length / prefill,
        "decode_tokens_per_s": decoded / decode if decode > 0 else None,
        "score_tokens_per_s": args.batch * args.score_length / score,
    }


def bench_thoughts(args, thoughts: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as folder, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mcore.cuda_as_cpu():
            build_folder(folder, args.arch, args.size, thoughts, args.jacobi_iterations,
                         args.seed)
            engines = [MegatronEngine(folder),
                       TransformersEngine(folder, args.native_cpu_layer)]
        prompts, mask, scored = make_inputs(args, SIZES[args.size]["vocab_size"])
        load_before = os.getloadavg()
        with torch.inference_mode():
            check = check_agreement(engines, prompts, mask, scored, args.new_tokens, args.atol)
            times = measure(engines, prompts, mask, scored, args) if check["passed"] else None
    result = {"K": thoughts, "J": args.jacobi_iterations if thoughts else 0, "check": check,
              "load_average_1min": [load_before[0], os.getloadavg()[0]]}
    if times is not None:
        result["engines"] = {
            name: dict({clock: summarize(t[clock], args) for clock in CLOCKS},
                       wall_best=summarize(t["wall"], args, best=True), times_s=t)
            for name, t in times.items()}
    return result


TABLES = {"wall": "tokens per s (median of the repeats)",
          "cpu": "tokens per CPU s (median of the repeats)",
          "wall_best": "tokens per s (fastest of the repeats)"}


def print_table(results, summary: str) -> None:
    """Tokens per second of each engine (one of ``TABLES``) and the ratio transformers /
    megatron."""
    print(f"{TABLES[summary]}; ratio: transformers / megatron")
    header = (f"{'K':>2} {'J':>2} {'engine':>12} {'prefill':>10} {'decode':>10} {'scoring':>10} "
              f"{'max|dlogit|':>12}")
    print(header)
    print("-" * len(header))
    for result in results:
        check = result["check"]
        if "engines" not in result:
            print(f"{result['K']:>2} {result['J']:>2} {'MISMATCH':>12}  greedy equal: "
                  f"{check['greedy_tokens_equal']}, max |dlogit| "
                  f"{check['max_abs_logit_diff']:.2e}, |dloss| {check['abs_loss_diff']:.2e} "
                  f"(atol {check['atol']:.0e}): not timed")
            continue
        rows = {name: engine[summary] for name, engine in result["engines"].items()}
        for name, row in rows.items():
            print(f"{result['K']:>2} {result['J']:>2} {name:>12} " + " ".join(
                f"{(f'{row[key]:.1f}' if row[key] else '-'):>10}" for key in RATES)
                + f" {check['max_abs_logit_diff']:>12.1e}")
        ratios = [rows["transformers"][key] / rows["megatron"][key]
                  if rows["transformers"][key] and rows["megatron"][key] else None
                  for key in RATES]
        print(f"{'':>5} {'ratio':>12} " + " ".join(
            f"{(f'{r:.2f}x' if r else '-'):>10}" for r in ratios))


def git_commit() -> dict:
    def git(*command):
        return subprocess.run(["git", "-C", REPO, *command], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "modified_files": git("status", "--porcelain", "--untracked-files=no")
                .splitlines()}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified_files": []}


def machine_facts() -> dict:
    import transformers

    return {
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("llama", "gpt_neox"), default="llama")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="model size: " + "; ".join(
                            f"{name}: {s['num_layers']} layers, H={s['hidden_size']}, "
                            f"{s['num_attention_heads']} heads, vocab {s['vocab_size']}"
                            for name, s in SIZES.items()) + " (default: small)")
    parser.add_argument("--thoughts", type=int, nargs="+", default=[0, 1, 2], metavar="K",
                        help="latent thoughts K to run (default: 0 1 2; 0 = vanilla)")
    parser.add_argument("--jacobi-iterations", type=int, default=3, metavar="J",
                        help="fixed Jacobi passes of the prefill and scoring (default: 3)")
    parser.add_argument("--batch", type=int, default=4, help="rows (default: 4)")
    parser.add_argument("--prompt-length", type=int, default=128,
                        help="prompt tokens per row for prefill and decode (default: 128)")
    parser.add_argument("--new-tokens", type=int, default=32,
                        help="greedy tokens generated per row (default: 32)")
    parser.add_argument("--score-length", type=int, default=256,
                        help="tokens per row for scoring (default: 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median; default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs (default: 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest logit / loss difference the engines may show (default: "
                             "%(default)s)")
    parser.add_argument("--native-cpu-layer", action="store_true",
                        help="run the transformers engine inside megatron-core's CPU layer too "
                             "(default: outside it, as in a process without megatron-core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join("runs", "bench_inference.json"),
                        help="JSON results (default: runs/bench_inference.json)")
    args = parser.parse_args(argv)
    for name in ("batch", "prompt_length", "score_length", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.new_tokens < 2:
        parser.error(f"--new-tokens must be >= 2 (decode = generate(N) - generate(1)), got "
                     f"{args.new_tokens}")
    if args.warmup < 0 or args.jacobi_iterations < 0 or min(args.thoughts) < 0:
        parser.error("--warmup, --jacobi-iterations and --thoughts must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count())
    mcore.init(single_process=True)
    with outside_cpu_layer():
        return run(args, sys.argv[1:] if argv is None else list(argv))


def run(args, argv) -> int:
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    facts = machine_facts()
    print(f"{args.arch} {args.size} ({SIZES[args.size]}), batch {args.batch}, prompt "
          f"{args.prompt_length}, {args.new_tokens} new tokens, scoring {args.score_length} | "
          f"{facts['processor']}, {facts['torch_threads']} threads | load average "
          f"{load_start[0]:.2f}", flush=True)
    results = []
    for thoughts in args.thoughts:
        results.append(bench_thoughts(args, thoughts))
        print(f"K={thoughts} done", flush=True)
    load_end = os.getloadavg()
    for summary in TABLES:
        print_table(results, summary)
    print(f"load average (1, 5, 15 min): start {load_start}, end {load_end}")
    passed = all(r["check"]["passed"] for r in results)
    if not passed:
        print("ERROR: the engines disagree (greedy tokens or logits); those K were not timed")
    report = {
        "command": " ".join(["tools/bench_inference.py"] + argv),
        "started": started, **git_commit(), "machine": facts,
        "load_average": {"start": list(load_start), "end": list(load_end)},
        "settings": {key: value for key, value in vars(args).items() if key != "output"},
        "model": dict(SIZES[args.size], arch=args.arch), "dtype": "float32",
        "passed": passed, "results": results,
    }
    if os.path.dirname(args.output):
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.output}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
