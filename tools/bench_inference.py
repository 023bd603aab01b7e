#!/usr/bin/env python
"""Time the inference engine, the transformers-native model, on a random-weight model: prefill,
decode, scoring.

The model is ``from_pretrained(folder)``: the transformers-native ``PonderLM2ForCausalLM`` of
``megatron_ponder/hf/remote`` (the class ``AutoModelForCausalLM`` loads with
``trust_remote_code=True``). For each K the tool builds a model from a seed (no download),
exports it to a temporary folder, loads it and, before any timing, checks it against our
megatron-core training model of the same folder (``load_training_model``): the scoring logits
and loss within ``--atol`` of the training forward's, and greedy tokens equal to greedy decoding
by repeated full training forwards (a fast wrong model must not produce a number; exit status
1). The greedy check runs on short left-padded prompts (rows of 8, 7, ... tokens, 4 new tokens)
with K * length + 1 Jacobi passes for both: the KV-cached decoding gives each new token its
exact thoughts, which full forwards reach only once the Jacobi passes have converged.

What is timed (float32 on the CPU, ``torch.inference_mode``, greedy, KV cache):
  prefill   ``generate`` of 1 new token from ``--batch`` prompts of ``--prompt-length``
            tokens: all passes over the prompts plus one next-token choice.
            prefill tokens/s = batch * prompt length / that time.
  decode    ``generate`` of ``--new-tokens`` N tokens minus the prefill time: the N - 1 tokens
            fed back one at a time (K+1 single-slot steps each).
            decode tokens/s = batch * (N - 1) / (time(N) - time(1)).
  scoring   the forward over ``--batch`` sequences of ``--score-length`` tokens returning
            logits and loss. scoring tokens/s = batch * score length / that time.
Each is timed ``--repeats`` times after ``--warmup`` untimed runs, on two clocks: wall time and
the process's CPU time (all threads). The tables give medians (decode: the median over repeats
of generate - prefill of the same repeat) and, for wall time, the fastest run of each (decode:
fastest generate - fastest prefill), which is the better estimate where other programs take the
cores in bursts; every time is in the JSON.

The model is timed outside megatron-core's CPU layer (``mcore.cuda_as_cpu``), as in a process
that never loads megatron-core; building the model and the training forwards of the check run
inside it, as megatron-core does on a machine without CUDA.

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
import torch.nn.functional as F

from megatron_ponder import mcore
from megatron_ponder.mcore import cpu
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import from_pretrained, load_training_model, save_pretrained
from megatron_ponder.hf.prompts import left_pad
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
# The greedy check: short prompts (Jacobi passes to convergence grow with their length).
CHECK_PROMPT_LENGTH = 8
CHECK_NEW_TOKENS = 4


class NativeModel:
    """``from_pretrained(folder)``: the transformers-native PonderLM2ForCausalLM."""

    def __init__(self, folder: str):
        self.model = from_pretrained(folder)
        # Random weights may pick the end-of-text id; no row may stop early.
        self.model.generation_config.eos_token_id = None

    def generate(self, ids, mask, new_tokens: int, **jacobi) -> torch.Tensor:
        return self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                   do_sample=False, pad_token_id=0, **jacobi)

    def score(self, ids):
        out = self.model(ids, labels=ids, use_cache=False)
        return out.logits, out.loss


@contextlib.contextmanager
def outside_cpu_layer():
    """megatron-core's CPU layer off inside the block (``mcore.init`` switches it on for the
    whole process), back as it was after it."""
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


def training_greedy(reference, row, new_tokens: int, **jacobi):
    """Greedy decoding of one unpadded prompt by repeated full forwards of the training
    model (``jacobi``: its forward's ``jacobi_iterations``)."""
    ids = list(row)
    for _ in range(new_tokens):
        ids.append(int(reference(torch.tensor([ids]), **jacobi)[0, -1].argmax()))
    return ids[len(row):]


def check_model(native, folder: str, thoughts: int, prompts, scored, atol: float) -> dict:
    """The native model against the training model of the same folder: scoring logits and
    loss within ``atol``; greedy tokens of left-padded short prompts equal greedy decoding by
    full training forwards, both with Jacobi converged (K * length + 1 passes)."""
    rows = [prompts[i, :max(1, CHECK_PROMPT_LENGTH - i)].tolist()
            for i in range(prompts.shape[0])]
    exact = thoughts * (CHECK_PROMPT_LENGTH + CHECK_NEW_TOKENS) + 1
    ids, mask = left_pad(rows, 0)
    width = ids.shape[1]
    logits, loss = native.score(scored)
    jacobi = {"jacobi_iterations": exact} if thoughts else {}  # vanilla: no Jacobi passes
    generated = native.generate(ids, mask, CHECK_NEW_TOKENS, **jacobi)
    with mcore.cuda_as_cpu():  # the training model runs as megatron-core does here
        reference = load_training_model(folder)
        reference_logits = reference(scored)
        reference_loss = F.cross_entropy(reference_logits[:, :-1].flatten(0, 1),
                                         scored[:, 1:].flatten())
        expected = [training_greedy(reference, row, CHECK_NEW_TOKENS, **jacobi) for row in rows]
    logit_diff = float((logits - reference_logits).abs().max())
    loss_diff = float((loss - reference_loss).abs())
    check = {
        "greedy_tokens_equal": generated[:, width:].tolist() == expected,
        "greedy_tokens_compared": len(rows) * CHECK_NEW_TOKENS,
        "greedy_check_jacobi_iterations": exact if thoughts else 0,
        "max_abs_logit_diff": logit_diff, "abs_loss_diff": loss_diff, "atol": atol,
    }
    check["passed"] = (check["greedy_tokens_equal"] and logit_diff <= atol
                       and loss_diff <= atol)
    return check


def timed(fn):
    """(wall, CPU) seconds of ``fn()``. CPU time is this process's, all threads: less
    sensitive than wall time to other programs taking the cores."""
    wall, cpu_time = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu_time


def measure(native, prompts, mask, scored, args) -> dict:
    """{clock: {measure: [seconds per repeat]}}: each repeat runs prefill, generate and score
    back to back (so generate - prefill of one repeat saw the same load)."""
    calls = {
        "prefill": lambda: native.generate(prompts, mask, 1),
        "generate": lambda: native.generate(prompts, mask, args.new_tokens),
        "score": lambda: native.score(scored),
    }
    for _ in range(args.warmup):
        for measure_name in MEASURES:
            timed(calls[measure_name])
    times = {clock: {m: [] for m in MEASURES} for clock in CLOCKS}
    for _ in range(args.repeats):
        for measure_name in MEASURES:
            for clock, seconds in zip(CLOCKS, timed(calls[measure_name])):
                times[clock][measure_name].append(seconds)
    return times


def summarize(times: dict, args, best: bool = False) -> dict:
    """Seconds and tokens/s of the timings on one clock: medians (decode: the median over
    repeats of generate - prefill), or with ``best`` the fastest run of each (decode: fastest
    generate - fastest prefill)."""
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
        native = NativeModel(folder)
        prompts, mask, scored = make_inputs(args, SIZES[args.size]["vocab_size"])
        load_before = os.getloadavg()
        with torch.inference_mode():
            check = check_model(native, folder, thoughts, prompts, scored, args.atol)
            times = measure(native, prompts, mask, scored, args) if check["passed"] else None
    result = {"K": thoughts, "J": args.jacobi_iterations if thoughts else 0, "check": check,
              "load_average_1min": [load_before[0], os.getloadavg()[0]]}
    if times is not None:
        result["timings"] = dict({clock: summarize(times[clock], args) for clock in CLOCKS},
                                 wall_best=summarize(times["wall"], args, best=True),
                                 times_s=times)
    return result


TABLES = {"wall": "tokens per s (median of the repeats)",
          "cpu": "tokens per CPU s (median of the repeats)",
          "wall_best": "tokens per s (fastest of the repeats)"}


def print_table(results, summary: str) -> None:
    """Tokens per second for each K (one of ``TABLES``) and the check's largest logit
    difference from the training forward."""
    print(TABLES[summary])
    header = (f"{'K':>2} {'J':>2} {'prefill':>10} {'decode':>10} {'scoring':>10} "
              f"{'max|dlogit|':>12}")
    print(header)
    print("-" * len(header))
    for result in results:
        check = result["check"]
        if "timings" not in result:
            print(f"{result['K']:>2} {result['J']:>2} MISMATCH with the training model: greedy "
                  f"equal: {check['greedy_tokens_equal']}, max |dlogit| "
                  f"{check['max_abs_logit_diff']:.2e}, |dloss| {check['abs_loss_diff']:.2e} "
                  f"(atol {check['atol']:.0e}): not timed")
            continue
        row = result["timings"][summary]
        print(f"{result['K']:>2} {result['J']:>2} " + " ".join(
            f"{(f'{row[key]:.1f}' if row[key] else '-'):>10}" for key in RATES)
            + f" {check['max_abs_logit_diff']:>12.1e}")


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
                        help="largest logit / loss difference from the training forward "
                             "allowed (default: %(default)s)")
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
        print("ERROR: the model disagrees with the training model (greedy tokens or logits); "
              "those K were not timed")
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
