#!/usr/bin/env python3
"""Reproduce PonderLM-2's comparison with its baselines at a chosen scale, in one command.

Trains every arm (vanilla, 2x depth, PonderLM-2 K=1, Pause, Loop, compute-matched vanilla,
cheaper PonderLM-2 training, continued pretraining from vanilla; two seeds of vanilla and
PonderLM-2) with the same data order, learning-rate schedule and seed, keeps every checkpoint
under --output-dir, evaluates each on the validation split (and --eval-text), and writes
table.md, results.json and three PNGs. Run it again to resume after an interruption;
--report-only rewrites the report from whatever has finished.

    python tools/reproduce.py                          # --scale small: 2 CPU cores, ~90 min
    python tools/reproduce.py --arms vanilla ponderlm2-k1 --eval-text notes.txt
    python tools/reproduce.py --scale gpu-70m --data-path /data/pile_text_document \\
        --valid-data-path /data/pile_val_text_document \\
        --tokenizer-model EleutherAI/gpt-neox-20b --nproc-per-node 8 --jobs 1
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.reproduction.recipes import RECIPES, arms_for, at_learning_rate, \
    best_learning_rate, select_arms

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="arms: " + ", ".join(
                                         arm.name for arm in arms_for(RECIPES["small"])))
    parser.add_argument("--scale", choices=sorted(RECIPES), default="small",
                        help="recipe: " + "; ".join(f"{name}: {recipe.description}"
                                                    for name, recipe in RECIPES.items()))
    parser.add_argument("--arms", nargs="+", default=None,
                        help="run only these arms (and the arms they continue from)")
    parser.add_argument("--lr", nargs="+", default=None, metavar="LR",
                        help="peak learning rate(s) (default: the recipe's); every arm runs at "
                             "each, an arm at a rate other than the recipe's as <arm>-lr<LR>. "
                             "'best': each arm at the rate whose finished run of it (or of the "
                             "arm it derives from: a second seed, a cheaper variant) reached "
                             "the lowest validation loss in --output-dir")
    parser.add_argument("--output-dir", default=None,
                        help="default: runs/reproduce/<scale>")
    parser.add_argument("--eval-text", default=None,
                        help="UTF-8 text or JSONL file to score every arm on (held-out text); "
                             "small/long scales default to Python's tutorial from Debian's "
                             "python3.11-doc, which no arm trains on")
    parser.add_argument("--no-eval-text", action="store_true",
                        help="skip the held-out text evaluation")
    parser.add_argument("--jobs", type=int, default=None,
                        help="arms trained at once (default: 2 on CPU, each with half the "
                             "cores; 1 with GPUs)")
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="processes (GPUs) per arm; > 1 launches arms with torchrun")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write table.md, results.json and the plots from "
                             "every finished run in --output-dir (all arms and rates)")
    parser.add_argument("--gap-plot-with", nargs="+", default=(), metavar="DIR",
                        help="with --report-only: other scales' output directories, drawn "
                             "beside this one in gap_vs_tokens.png (the gap to vanilla "
                             "against training tokens)")
    data = parser.add_argument_group("data (GPU scales; small/long build their own)")
    data.add_argument("--data-path", nargs="+", default=None)
    data.add_argument("--split", default="969,30,1")
    data.add_argument("--valid-data-path", default=None,
                      help="held-out .bin/.idx prefix scored for the final validation loss "
                           "(GPU scales; required with --data-path)")
    data.add_argument("--tokenizer-model", default=None)
    data.add_argument("--vocab-size", type=int, default=2048,
                      help="BPE size for the small/long scales (default: %(default)s)")
    return parser.parse_args(argv)


def data_setup(args, recipe):
    """(data flags, validation prefix, held-out text or None)."""
    if recipe.needs_data:
        if not args.data_path or not args.valid_data_path:
            raise ValueError(f"--scale {recipe.name} needs --data-path (Megatron .bin/.idx "
                             f"prefixes to train on) and --valid-data-path (a held-out prefix "
                             f"scored at the end), and usually --tokenizer-model")
        flags = ["--data-path", *args.data_path, "--split", args.split]
        if args.tokenizer_model:
            flags += ["--tokenizer-model", args.tokenizer_model]
        return flags, args.valid_data_path, args.eval_text
    from megatron_ponder.reproduction.data import prepare_held_out_text, prepare_small_corpus

    corpus_dir = os.path.join(REPO_ROOT, "data", "default")
    flags, valid = prepare_small_corpus(corpus_dir, args.vocab_size,
                                        workers=min(os.cpu_count() or 1, 2))
    eval_text = args.eval_text
    if eval_text is None and not args.no_eval_text:
        eval_text = prepare_held_out_text(os.path.join(REPO_ROOT, "data", "heldout"),
                                          os.path.join(REPO_ROOT, "data", "heldout",
                                                       "python-tutorial.txt"))
    return flags, valid, eval_text


def choose_arms(recipe, names, rates, output_dir):
    """The selected arms at the --lr rates (numbers, or 'best' from finished runs)."""
    if rates != ["best"]:
        try:
            values = [float(rate) for rate in rates] if rates else None
        except ValueError:
            raise ValueError(f"--lr takes numbers or 'best', got {' '.join(rates)}") from None
        return select_arms(recipe, names, values)
    from megatron_ponder.reproduction.runner import read_json

    arms = select_arms(recipe, names)
    continued = ", ".join(arm.name for arm in arms if arm.init_from)
    if continued:
        raise ValueError(f"--lr best does not choose rates for continued arms ({continued}): "
                         "give them --lr RATE")
    return [at_learning_rate(recipe, arm, best_learning_rate(
        output_dir, arm, lambda run: read_json(os.path.join(run, "result.json"))))
        for arm in arms]


def report_only(args, recipe, output_dir) -> int:
    """--report-only: the report of every finished run in output_dir (and the other scales')."""
    from megatron_ponder.reproduction import report
    from megatron_ponder.reproduction.runner import finished_runs

    if not args.report_only:
        print("error: --gap-plot-with goes with --report-only", file=sys.stderr)
        return 2
    order = [arm.name for arm in arms_for(recipe)]
    directories = [output_dir, *map(os.path.abspath, args.gap_plot_with)]
    runs = []
    for directory in directories:
        found = finished_runs(directory, order) if os.path.isdir(directory) else []
        if not found:
            print(f"error: no finished run (<arm>/result.json) in {directory}", file=sys.stderr)
            return 2
        runs.append(found)
    others = [(os.path.basename(os.path.normpath(directory)), found)
              for directory, found in zip(directories[1:], runs[1:])]
    print(report.write_report(output_dir, runs[0], others))
    print(f"table: {os.path.join(output_dir, 'table.md')}; plots: "
          f"{', '.join(os.path.join(output_dir, name) for name in report.PLOTS)}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = RECIPES[args.scale]
    output_dir = os.path.abspath(args.output_dir or os.path.join(REPO_ROOT, "runs", "reproduce",
                                                                 recipe.name))
    if args.report_only or args.gap_plot_with:
        return report_only(args, recipe, output_dir)
    try:
        arms = choose_arms(recipe, args.arms, args.lr, output_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.eval_text and not os.path.isfile(args.eval_text):
        print(f"error: --eval-text {args.eval_text}: no such file", file=sys.stderr)
        return 2
    import torch

    from megatron_ponder.reproduction import report
    from megatron_ponder.reproduction.driver import Reproduction
    from megatron_ponder.reproduction.runner import Setup

    gpus = torch.cuda.is_available()
    jobs = args.jobs or (1 if gpus else 2)
    if jobs < 1 or (jobs > 1 and args.nproc_per_node > 1):
        print("error: --jobs must be >= 1, and 1 with --nproc-per-node > 1", file=sys.stderr)
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        flags, valid_prefix, eval_text = data_setup(args, recipe)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    os.makedirs(output_dir, exist_ok=True)
    setup = Setup(recipe=recipe, output_dir=output_dir, data_flags=flags, jobs=jobs,
                  cpu_threads=None if gpus else max((cores or 1) // jobs, 1),
                  nproc_per_node=args.nproc_per_node)
    reproduction = Reproduction(setup, arms, valid_prefix, eval_text)
    print(f"reproduction '{recipe.name}': {len(arms)} arms, {jobs} at a time, "
          f"in {output_dir}", flush=True)
    for arm in arms:
        print(f"  {arm.name:26s} {reproduction.iterations[arm.name]:6d} iterations  "
              f"{arm.description}", flush=True)
    status = 0
    # SIGTERM (a scheduler, `kill`) stops the running arms too, like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        reproduction.run()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(reproduction.write_report())
    print(f"table: {os.path.join(output_dir, 'table.md')}; plots: "
          f"{', '.join(os.path.join(output_dir, name) for name in report.PLOTS)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
