#!/usr/bin/env python
"""Draw training and validation loss curves from Megatron-format logs into one PNG.

    python tools/plot_loss.py runs/ponder/train.log runs/vanilla/train.log \
        --labels ponder vanilla --output loss.png

Reads the log lines pretrain_ponder.py prints (the same format as Megatron-LM, so Megatron-LM
logs work too): "iteration N/ M | ... | lm loss: X |" and
"validation loss at iteration N | lm loss value: X |". Several logs -> several runs on one plot;
train curves are lines, validation points are markers of the same colour.

``--compare`` instead checks that two runs logged the same training losses, iteration by
iteration, within ``--rtol`` (the GPU check compares the fast path with the local one this way):

    python tools/plot_loss.py fast/train.log local/train.log --compare --rtol 0.02
"""

import argparse
import os
import re
import sys
from typing import Dict, List, Tuple

_TRAIN = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?\| lm loss: ([0-9.eE+-]+|nan) \|")
_TOKENS = re.compile(r"consumed tokens:\s+(\d+)")
_VALID = re.compile(r"validation loss at iteration (\d+) \| lm loss value: ([0-9.eE+-]+)")


def parse_log(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """{'train': [(iteration, loss)], 'valid': [(iteration, loss)]} from one log file."""
    curves = {"train": [], "valid": []}
    with open(path, errors="replace") as f:
        for line in f:
            match = _TRAIN.search(line)
            if match:
                curves["train"].append((int(match.group(1)), float(match.group(2))))
                continue
            match = _VALID.search(line)
            if match:
                curves["valid"].append((int(match.group(1)), float(match.group(2))))
    return curves


def plot(runs: Dict[str, Dict[str, List[Tuple[int, float]]]], output: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for index, (label, curves) in enumerate(runs.items()):
        color = f"C{index}"
        if curves["train"]:
            x, y = zip(*curves["train"])
            ax.plot(x, y, color=color, linewidth=1.2, label=f"{label} train")
        if curves["valid"]:
            x, y = zip(*curves["valid"])
            ax.plot(x, y, color=color, linestyle="--", marker="o", markersize=4,
                    label=f"{label} validation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("lm loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)
    plt.close(fig)


def compare(reference: List[Tuple[int, float]], other: List[Tuple[int, float]],
            rtol: float) -> Tuple[List[str], bool]:
    """Table lines of the training losses both runs logged, and whether every pair agrees
    within ``rtol`` (relative to the first run's loss); False when they share no iteration."""
    first, second = dict(reference), dict(other)
    shared = sorted(set(first) & set(second))
    lines = ["| iteration | first | second | relative difference |", "|---:|---:|---:|---:|"]
    agree = bool(shared)
    for iteration in shared:
        a, b = first[iteration], second[iteration]
        difference = abs(a - b) / max(abs(a), 1e-12)
        ok = difference <= rtol  # NaN fails
        agree = agree and ok
        lines.append(f"| {iteration} | {a:.6f} | {b:.6f} | {difference:.2e}"
                     f"{'' if ok else ' over rtol'} |")
    return lines, agree


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="log files of pretrain_ponder.py / Megatron-LM")
    parser.add_argument("--labels", nargs="*", help="one label per log (default: file names)")
    parser.add_argument("--output", default="loss.png", help="PNG to write (default: loss.png)")
    parser.add_argument("--title", default="PonderLM-2 pretraining", help="plot title")
    parser.add_argument("--compare", action="store_true",
                        help="two logs: check their training losses agree within --rtol "
                             "instead of plotting (exit status 1 if not)")
    parser.add_argument("--rtol", type=float, default=0.02,
                        help="--compare's relative tolerance (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.compare and len(args.logs) != 2:
        parser.error(f"--compare takes two logs, got {len(args.logs)}")
    labels = args.labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) + "/" +
                             os.path.basename(p) for p in args.logs]
    if len(labels) != len(args.logs):
        parser.error(f"{len(args.logs)} logs but {len(labels)} labels")
    runs = {}
    for label, path in zip(labels, args.logs):
        if not os.path.isfile(path):
            parser.error(f"no such log file: {path}")
        curves = parse_log(path)
        if not curves["train"] and not curves["valid"]:
            parser.error(f"{path} has no Megatron-format loss lines")
        runs[label] = curves
    if args.compare:
        (first, second), (first_label, second_label) = runs.values(), labels
        lines, agree = compare(first["train"], second["train"], args.rtol)
        print(f"training losses of {first_label} (first) and {second_label} (second):")
        print("\n".join(lines))
        print(f"{'agree' if agree else 'DIFFER'} within rtol {args.rtol:g} over "
              f"{len(lines) - 2} shared iterations")
        return 0 if agree else 1
    plot(runs, args.output, args.title)
    counts = ", ".join(f"{label}: {len(curves['train'])} train / {len(curves['valid'])} "
                       f"validation points" for label, curves in runs.items())
    print(f"wrote {args.output} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
