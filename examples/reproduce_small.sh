#!/usr/bin/env bash
# The small-scale reproduction of PonderLM-2 against its baselines (docs/results.md):
#
#   bash examples/reproduce_small.sh                         # every arm, 2 CPU cores, ~90 min
#   bash examples/reproduce_small.sh --eval-text my.jsonl    # also score your held-out text
#   bash examples/reproduce_small.sh --scale long            # 3.75x the tokens (see below)
#   bash examples/reproduce_small.sh --scale gpu-70m --data-path /data/pile_text_document \
#       --valid-data-path /data/pile_val_text_document \
#       --tokenizer-model EleutherAI/gpt-neox-20b --nproc-per-node 8
#
# It builds the default corpus and a 2,048-token BPE of it if missing, trains every arm with the
# same data order, schedule and seed under runs/reproduce/<scale>/, evaluates each, and writes
# table.md, results.json and three PNGs there. Run it again to resume after an interruption: a
# finished arm is kept, an unfinished one continues from its last checkpoint. Any flag of
# tools/reproduce.py is passed through (--arms, --jobs, --lr, --output-dir, --report-only, ...).
#
# How long (one core per arm, two arms at a time; step times measured on a 2-core Intel Xeon,
# docs/results.md "How long it takes"): --scale small, every arm about 40 minutes of one core.
# --scale long, per arm: vanilla 3 min, 2x depth 6, Loop 5, PonderLM-2 K=1 24,
# --ponder-grad-passes 2 16, K=0 warm-up 13, compute-matched vanilla 26; every default arm once
# about 140 minutes of one core (Pause counted at 2x depth's time), a three-rate sweep of
# vanilla, 2x depth and K=1 (--lr 0.002 0.004 0.008) 98. Halve for two idle cores; other work
# on the machine stretches these several-fold.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" tools/reproduce.py "$@"
