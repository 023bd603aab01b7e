#!/usr/bin/env bash
# One-call GPU check of megatron_ponder: build the CUDA extension, run the GPU tests, benchmark the
# splice kernels and run a short bf16 training smoke, each step under its own time limit, with
# every log written to $OUT (at most 8 files) and a summary printed last.
#
# Made for an H100/H200 machine that has CUDA torch, triton and nvcc but no network and no
# megatron-core: that one comes as a wheel carried in .whl/ (prepare it on the development
# machine first). From the repository root:
#
#   here, once:       bash tools/device_check.sh --prepare      # downloads .whl/, git-ignored
#   on the GPU:       bash tools/device_check.sh                # all steps, at most 9 minutes
#                     (DEVICE_CHECK_BUDGET seconds, default 540; expected 3-5)
#                     bash tools/device_check.sh bench train    # only some steps
#
# Steps: env build tests bench train train_torch features. A step that fails does not stop the
# next one (the summary says which failed); the exit status is non-zero if any did. Outputs:
# $OUT (default runs/device_check): summary.txt (with the env step's output), build.log,
# tests.log, bench.txt, bench_kernels.json, train.log, train_torch.log, features.log (8 files,
# a small number of files to copy back).
# Record the results in docs/benchmarks.md with the card's name and the command.
set -u

WHEELS=.whl
MEGATRON_WHEEL="megatron-core==0.16.1"
OUT="${OUT:-runs/device_check}"
PY="${PYTHON:-python3}"
ALL_STEPS=(env build tests bench train train_torch features)

if [ "${1:-}" = "--prepare" ]; then
  # The device machine runs Python 3.12 and cannot reach a package index.
  mkdir -p "$WHEELS"
  grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "$MEGATRON_WHEEL" || exit 1
  echo "prepared $WHEELS/ ($(ls "$WHEELS" | tr '\n' ' ')); copy .whl/ to the GPU machine and run there"
  exit 0
fi

if [ ! -f setup.py ] || [ ! -d megatron_ponder ]; then
  echo "run from the repository root" >&2
  exit 2
fi
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
  case " ${ALL_STEPS[*]} " in *" $s "*) ;; *) echo "unknown step '$s' (choose from: ${ALL_STEPS[*]})" >&2; exit 2 ;; esac
done

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/device_site "$WHEELS"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/device_site"
fi

summary="$OUT/summary.txt"
: > "$summary"
failed=0
start_all=$SECONDS

# All steps together stay inside one 600 s window: each step's limit is cut to
# what is left of this budget, and a step with under 10 s left is skipped.
BUDGET="${DEVICE_CHECK_BUDGET:-540}"

# run_step NAME LIMIT_SECONDS LOG COMMAND...: run under a time limit, log to $OUT, record status.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS rc left=$((BUDGET - (SECONDS - start_all)))
  if [ "$left" -lt 10 ]; then
    printf '%-11s %-18s %4ds  %s\n' "$name" "SKIPPED (budget)" 0 "-" >> "$summary"
    failed=1
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
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
  # Its log is folded into summary.txt at the end (8 files at most, easy to copy back).
  run_step env 60 "$OUT/env.txt" bash -c "
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
    nvcc --version | tail -n 2
    $PY -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, \"SMs\")'
    $PY -c 'import megatron.core; print(\"megatron-core\", megatron.core.__version__)' || echo 'megatron-core missing: run --prepare here and carry .whl'
    nproc"
fi

if has_step build; then
  # One Hopper target keeps the build short; the extension is what the tests and bench load.
  run_step build 180 "$OUT/build.log" bash -c "
    TORCH_CUDA_ARCH_LIST=\${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=\$(nproc) $PY setup.py build_ext --inplace &&
    $PY -c 'import torch, megatron_ponder._C as ext; print(\"extension loaded:\", ext.__file__)'"
fi

if has_step tests; then
  # Kernel tests (GPU cases run here, interpreter cases too) and the model with each backend.
  run_step tests 240 "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider -rs \
    tests/ops tests/model/test_splice_backend_in_model.py
fi

if has_step bench; then
  run_step bench 240 "$OUT/bench.txt" "$PY" tools/bench_kernels.py --variant both \
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
  run_step train 180 "$OUT/train.log" "${TRAIN[@]}"
fi
if has_step train_torch; then
  run_step train_torch 180 "$OUT/train_torch.log" env MEGATRON_PONDER_SPLICE_BACKEND=torch \
    "${TRAIN[@]}"
fi

if has_step features; then
  # The training features CPU tests cover, once on the GPU (tiny model): fp16 loss scaling, async
  # checkpoints, params norm, the torch profiler with CUDA activity, then a resume.
  export CKPT=/tmp/device_check_ckpt PROF=/tmp/device_check_profile
  rm -rf "$CKPT" "$PROF"
  FEATURES=("$PY" -m torch.distributed.run --nproc-per-node 1 pretrain_ponder.py
    --model-preset tiny --mock-data --tokenizer-type NullTokenizer --vocab-size 1000 --fp16
    --initial-loss-scale 65536 --micro-batch-size 2 --global-batch-size 4 --log-interval 2
    --eval-iters 1 --num-workers 0 --seed 1 --save "$CKPT" --save-interval 4 --async-save
    --log-params-norm --exit-signal-handler --lr-decay-iters 10)
  # bash -c runs the two trainings and the listing in between ("$@" is FEATURES).
  run_step features 120 "$OUT/features.log" bash -c '
    "$@" --train-iters 8 --profile --use-pytorch-profiler --profile-step-start 2 \
      --profile-step-end 4 --profile-dir "$PROF" &&
    ls -l "$CKPT" "$PROF" &&
    "$@" --train-iters 10 --load "$CKPT"' features "${FEATURES[@]}"
fi

if [ -f "$OUT/env.txt" ]; then
  { echo; echo "== env"; cat "$OUT/env.txt"; } >> "$summary"
  rm -f "$OUT/env.txt"
fi
echo "== summary ($((SECONDS - start_all))s in all)"
cat "$summary"
if [ -f "$OUT/bench.txt" ]; then
  grep -E "^device:|^goal|^ERROR|^skipped" "$OUT/bench.txt"
fi
for log in "$OUT/train.log" "$OUT/train_torch.log"; do
  [ -f "$log" ] && grep -E " iteration +20/" "$log" | sed "s|^|$(basename "$log"): |" | cut -c1-400
done
exit $failed
