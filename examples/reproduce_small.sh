#!/usr/bin/env bash
# The small-scale reproduction of PonderLM-2 against its baselines (docs/results.md):
#
#   bash examples/reproduce_small.sh                         # every arm, 2 CPU cores, ~90 min
#   bash examples/reproduce_small.sh --eval-text my.jsonl    # also score your held-out text
#   bash examples/reproduce_small.sh --scale long            # 3.75x the tokens (4-5 hours on CPU)
#   bash examples/reproduce_small.sh --scale gpu-70m --data-path /data/pile_text_document \
#       --valid-data-path /data/pile_val_text_document \
#       --tokenizer-model EleutherAI/gpt-neox-20b --nproc-per-node 8
#
# It builds the default corpus and a 2,048-token BPE of it if missing, trains every arm with the
# same data order, schedule and seed under runs/reproduce/<scale>/, evaluates each, and writes
# table.md, results.json and two PNGs there. Run it again to resume after an interruption: a
# finished arm is kept, an unfinished one continues from its last checkpoint. Any flag of
# tools/reproduce.py is passed through (--arms, --jobs, --output-dir, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" tools/reproduce.py "$@"
