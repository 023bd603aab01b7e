#!/usr/bin/env bash
# GPU check of megatron_ponder on any CUDA machine: build the CUDA splice extension, run the kernel
# tests, benchmark the splice kernels, train a pythia-160m-shaped model in bf16 with the fused and
# with the torch splice, exercise the training features (fp16, async checkpoints, profiler,
# resume) and time training steps of vanilla and PonderLM-2 (tools/bench_train.py). Each step
# runs under its own time limit; a failed step does not stop the next one. Logs and JSON go to
# the output directory and a summary is printed last; the exit status is non-zero if any step
# failed.
#
#   bash tools/gpu_check.sh                         # every step, outputs in runs/gpu_check
#   bash tools/gpu_check.sh --out DIR bench train   # some steps, outputs in DIR
#   bash tools/gpu_check.sh --budget 540            # all steps within 540 s (later ones skipped)
#
# Air-gapped clusters: download the wheels where pip works, copy the folder along, and install
# from it on the cluster (into a private target directory added to PYTHONPATH, nothing else is
# touched):
#
#   bash tools/gpu_check.sh --prepare wheels/ [--python-version 3.12]   # where pip works
#   bash tools/gpu_check.sh --wheels wheels/                            # on the cluster
#
# Steps: env build tests bench train train_torch features bench_train. Outputs: summary.txt,
# env.txt, build.log, tests.log, bench.txt, bench_kernels.json, train.log, train_torch.log,
# features.log, bench_train.txt, bench_train.json.
# Record the results in docs/benchmarks.md with the card's name and the command.
set -u

ALL_STEPS=(env build tests bench train train_torch features bench_train)
PREPARE_PACKAGES=("megatron-core==0.16.1")
usage() {
  echo "usage: bash tools/gpu_check.sh [--out DIR] [--wheels DIR] [--budget SECONDS] [STEP ...]" >&2
  echo "       bash tools/gpu_check.sh --prepare DIR [--python-version X.Y]" >&2
  echo "steps: ${ALL_STEPS[*]}" >&2
}

OUT="${OUT:-runs/gpu_check}"
PY="${PYTHON:-python3}"
WHEELS=""
BUDGET=0
PREPARE=""
PYTHON_VERSION=""
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --prepare) PREPARE="${2:?--prepare needs a directory}"; shift 2 ;;
    --python-version) PYTHON_VERSION="${2:?--python-version needs X.Y}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --*) echo "unknown option '$1'" >&2; usage; exit 2 ;;
    *) steps+=("$1"); shift ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "--budget must be a whole number of seconds, got '$BUDGET'" >&2; exit 2 ;; esac

if [ -n "$PREPARE" ]; then
  # Binary wheels of what a CUDA image usually lacks, for the cluster's Python (default: this one).
  [ -z "$PYTHON_VERSION" ] && PYTHON_VERSION=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  mkdir -p "$PREPARE"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$PREPARE" "${PREPARE_PACKAGES[@]}" || exit 1
  echo "prepared $PREPARE for Python $PYTHON_VERSION: $(ls "$PREPARE" | tr '\n' ' ')"
  exit 0
fi

if [ ! -f setup.py ] || [ ! -d megatron_ponder ]; then
  echo "run from the repository root" >&2
  exit 2
fi
[ ${#steps[@]} -eq 0 ] && steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
  case " ${ALL_STEPS[*]} " in *" $s "*) ;; *) echo "unknown step '$s' (choose from: ${ALL_STEPS[*]})" >&2; exit 2 ;; esac
done
if [ -n "$WHEELS" ] && ! ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  echo "--wheels $WHEELS: no .whl files there (make them with --prepare)" >&2
  exit 2
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  site="$OUT/site-packages"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$WHEELS"/*.whl || { echo "installing the wheels in $WHEELS failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$PWD/$site"
fi

summary="$OUT/summary.txt"
: > "$summary"
failed=0
start_all=$SECONDS

# run_step NAME LIMIT_SECONDS LOG COMMAND...: run under a time limit (cut to what is left of
# --budget, if one was given; a step with under 10 s left is skipped), log to the output
# directory, record the status.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS rc
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - (SECONDS - start_all)))
    if [ "$left" -lt 10 ]; then
      printf '%-11s %-18s %4ds  %s\n' "$name" "SKIPPED (budget)" 0 "-" >> "$summary"
      failed=1
      return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "== $name (limit ${limit}s) -> $log"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  local status="ok"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMED OUT"
  [ $rc -ne 0 ] && [ "$status" = "ok" ] && status="FAILED (rc $rc)"
  [ $rc -ne 0 ] && failed=1
  printf '%-11s %-18s %4ds  %s\n' "$name" "$status" $((SECONDS - t0)) "$log" >> "$summary"
  tail -n 5 "$log"
}

has_step() { case " ${steps[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if has_step env; then
  run_step env 60 "$OUT/env.txt" bash -c "
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
    nvcc --version | tail -n 2
    $PY -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, \"SMs\")'
    $PY -c 'import megatron.core; print(\"megatron-core\", megatron.core.__version__)' || echo 'megatron-core missing: install it, or pass --wheels (see --prepare)'
    nproc"
fi

if has_step build; then
  # Unless TORCH_CUDA_ARCH_LIST says otherwise, torch builds for the GPUs it sees.
  run_step build 300 "$OUT/build.log" bash -c "
    MAX_JOBS=\$(nproc) $PY setup.py build_ext --inplace &&
    $PY -c 'import torch, megatron_ponder._C as ext; print(\"extension loaded:\", ext.__file__)'"
fi

if has_step tests; then
  # Kernel tests (GPU cases run here, interpreter cases too) and the model with each backend.
  run_step tests 300 "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider -rs \
    tests/ops tests/model/test_splice_backend_in_model.py
fi

if has_step bench; then
  run_step bench 300 "$OUT/bench.txt" "$PY" tools/bench_kernels.py --variant both \
    --json "$OUT/bench_kernels.json"
fi

# pythia-160m shape, K=1, J=3 (5 passes), bf16, mock data: does training run on a GPU, and how
# fast. 20 iterations of 8 sequences of 2048 tokens; train_torch repeats it with the torch splice
# (same losses expected, the time difference is the fused kernel's end-to-end effect).
TRAIN=("$PY" -m torch.distributed.run --nproc-per-node 1 pretrain_ponder.py
  --model-preset pythia-160m --mock-data --tokenizer-type NullTokenizer --vocab-size 50304
  --num-latent-thoughts 1 --jacobi-iterations 3 --bf16 --micro-batch-size 2
  --global-batch-size 8 --train-iters 20 --log-interval 5 --eval-iters 0 --num-workers 0 --seed 1)
if has_step train; then
  run_step train 240 "$OUT/train.log" "${TRAIN[@]}"
fi
if has_step train_torch; then
  run_step train_torch 240 "$OUT/train_torch.log" env MEGATRON_PONDER_SPLICE_BACKEND=torch \
    "${TRAIN[@]}"
fi

if has_step features; then
  # The training features the CPU tests cover, once on the GPU (tiny model): fp16 loss scaling,
  # async checkpoints, params norm, the torch profiler with CUDA activity, then a resume.
  export CKPT="$OUT/features_ckpt" PROF="$OUT/features_profile"
  rm -rf "$CKPT" "$PROF"
  FEATURES=("$PY" -m torch.distributed.run --nproc-per-node 1 pretrain_ponder.py
    --model-preset tiny --mock-data --tokenizer-type NullTokenizer --vocab-size 1000 --fp16
    --initial-loss-scale 65536 --micro-batch-size 2 --global-batch-size 4 --log-interval 2
    --eval-iters 1 --num-workers 0 --seed 1 --save "$CKPT" --save-interval 4 --async-save
    --log-params-norm --exit-signal-handler --lr-decay-iters 10)
  # bash -c runs the two trainings and the listing in between ("$@" is FEATURES).
  run_step features 180 "$OUT/features.log" bash -c '
    "$@" --train-iters 8 --profile --use-pytorch-profiler --profile-step-start 2 \
      --profile-step-end 4 --profile-dir "$PROF" &&
    ls -l "$CKPT" "$PROF" &&
    "$@" --train-iters 10 --load "$CKPT"' features "${FEATURES[@]}"
fi

if has_step bench_train; then
  # Vanilla and PonderLM-2 K=1/K=2 at J=2/3 of the pythia-160m shape in bf16: step time against
  # FLOPs, MFU against the card's peak.
  run_step bench_train 300 "$OUT/bench_train.txt" "$PY" tools/bench_train.py \
    --model-preset pythia-160m --vocab-size 50304 --bf16 --micro-batch-size 2 \
    --global-batch-size 2 --steps 5 --warmup-steps 2 --json "$OUT/bench_train.json"
fi

echo "== summary ($((SECONDS - start_all))s in all)"
cat "$summary"
if [ -f "$OUT/env.txt" ]; then
  cat "$OUT/env.txt"
fi
if [ -f "$OUT/bench.txt" ]; then
  grep -E "^device:|^goal|^ERROR|^skipped" "$OUT/bench.txt"
fi
for log in "$OUT/train.log" "$OUT/train_torch.log"; do
  [ -f "$log" ] && grep -E " iteration +20/" "$log" | sed "s|^|$(basename "$log"): |" | cut -c1-400
done
if [ -f "$OUT/bench_train.txt" ]; then
  grep -E "^\|" "$OUT/bench_train.txt"
fi
exit $failed
