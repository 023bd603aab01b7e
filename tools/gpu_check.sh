#!/usr/bin/env bash
# GPU check of megatron_ponder on any CUDA machine, in one call: build the CUDA splice extension,
# run the kernel tests, benchmark the splice kernels, train with the fast path (Transformer
# Engine, fusions) and with the local path and compare their losses, time training steps of
# Llama-410M and Llama-1.4B (K=1 J=3 and vanilla, sequence 2048, bf16: MFU over all passes,
# tokens/s, peak memory) with a profile of one step's top kernels, exercise the training
# features (fp16, async checkpoints, profiler, resume) and compare the fused splice with the
# torch one end to end. Each step runs under its own time limit; a failed step does not stop the
# next one. Logs go to the output directory, every result is gathered into gpu_check.json after
# each step (partial results survive a cut-off), and a summary is printed last; the exit status
# is non-zero if any step failed.
#
#   bash tools/gpu_check.sh --budget 540            # everything within 9 minutes (one H100)
#   bash tools/gpu_check.sh --out DIR bench fastpath # some steps, outputs in DIR
#   bash tools/gpu_check.sh --dry-run               # rehearse on CPU: each step's CPU-runnable
#                                                   # part, tiny models (docs/gpu.md)
#
# Air-gapped clusters: download the wheels where pip works, copy the folder along, and install
# from it on the cluster (into a private target directory added to PYTHONPATH, nothing else is
# touched):
#
#   bash tools/gpu_check.sh --prepare wheels/ [--python-version 3.12]   # where pip works
#   bash tools/gpu_check.sh --wheels wheels/                            # on the cluster
#
# Steps, in order of value: env build tests bench fastpath bench_train bench_1.4b
# features train train_torch. Outputs: gpu_check.json, summary.txt, env.txt, build.log,
# tests.log, bench.txt, bench_kernels.json, fastpath_te.log, fastpath_local.log, fastpath.txt,
# bench_train.txt/.json (Llama-410M, with the profile), bench_1.4b.txt/.json,
# features.log, train.log, train_torch.log.
# Record the results in docs/benchmarks.md with the card's name and the command.
set -u

ALL_STEPS=(env build tests bench fastpath bench_train bench_1.4b features train train_torch)
PREPARE_PACKAGES=("megatron-core==0.16.1")
usage() {
  echo "usage: bash tools/gpu_check.sh [--out DIR] [--wheels DIR] [--budget SECONDS] [--dry-run] [STEP ...]" >&2
  echo "       bash tools/gpu_check.sh --prepare DIR [--python-version X.Y]" >&2
  echo "steps: ${ALL_STEPS[*]}" >&2
}

OUT="${OUT:-runs/gpu_check}"
PY="${PYTHON:-python3}"
WHEELS=""
BUDGET=0
PREPARE=""
PYTHON_VERSION=""
DRY=0
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --prepare) PREPARE="${2:?--prepare needs a directory}"; shift 2 ;;
    --python-version) PYTHON_VERSION="${2:?--python-version needs X.Y}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
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
  # A dry run's tiny models on CPU are slower than the real ones on a GPU.
  [ "$DRY" = 1 ] && limit=$((limit * 3))
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - (SECONDS - start_all)))
    if [ "$left" -lt 10 ]; then
      printf '%-11s  %-18s  %4ds  %s\n' "$name" "SKIPPED (budget)" 0 "-" >> "$summary"
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
  printf '%-11s  %-18s  %4ds  %s\n' "$name" "$status" $((SECONDS - t0)) "$log" >> "$summary"
  tail -n 5 "$log"
}

has_step() { case " ${steps[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# gather: every result so far in one JSON (run after each step, so a cut-off run keeps what it
# measured).
gather() {
  "$PY" - "$OUT" "$DRY" <<'PYEOF' || echo "gathering the results into gpu_check.json failed" >&2
import json, os, re, sys, time
out, dry = sys.argv[1], sys.argv[2] == "1"
def load(name):
    path = os.path.join(out, name)
    if not os.path.isfile(path):
        return None
    with open(path, errors="replace") as handle:
        return json.load(handle) if name.endswith(".json") else handle.read().splitlines()
steps = []
for line in load("summary.txt") or []:  # "name  status  Ns  log", columns 2+ spaces apart
    name, status, seconds, log = (re.split(r"\s{2,}", line.strip()) + [""] * 4)[:4]
    steps.append(dict(step=name, status=status, log=log,
                      seconds=int(seconds[:-1]) if seconds[:-1].isdigit() else None))
result = dict(dry_run=dry, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), steps=steps,
              env=load("env.txt"), bench_kernels=load("bench_kernels.json"),
              fastpath=load("fastpath.txt"), bench_train_410m=load("bench_train.json"),
              bench_1_4b=load("bench_1.4b.json"))
with open(os.path.join(out, "gpu_check.json.partial"), "w") as handle:
    json.dump(result, handle, indent=1)
os.replace(os.path.join(out, "gpu_check.json.partial"), os.path.join(out, "gpu_check.json"))
PYEOF
}

# The models of the training steps: on the GPU the real sizes, in a dry run tiny ones on CPU.
if [ "$DRY" = 1 ]; then
  FAST_MODEL=(--model-preset tiny-llama --seq-length 64 --micro-batch-size 2 --global-batch-size 4
    --vocab-size 1000 --train-iters 3)
  BENCH_410M=(--model-preset tiny-llama --seq-length 64 --vocab-size 1000 --micro-batch-size 2
    --global-batch-size 2 --steps 1 --warmup-steps 0)
  BENCH_1B=("${BENCH_410M[@]}")
  TRAIN_MODEL=(--model-preset tiny --seq-length 64 --vocab-size 1000 --micro-batch-size 2
    --global-batch-size 4 --train-iters 3)
  BENCH_KERNELS=(--device cpu --quick --iters 1 --warmup 0)
  echo "dry run: each step's CPU-runnable part with tiny models (nothing here measures a GPU)"
else
  # Llama-410M and 1.4B (the 1.4B with the paper's full recomputation), sequence 2048.
  FAST_MODEL=(--model-preset llama-410m --seq-length 2048 --micro-batch-size 2
    --global-batch-size 16 --vocab-size 50304 --train-iters 12)
  BENCH_410M=(--model-preset llama-410m --seq-length 2048 --vocab-size 50304
    --micro-batch-size 4 --global-batch-size 16 --steps 3 --warmup-steps 2)
  BENCH_1B=(--model-preset llama-1.4b --seq-length 2048 --vocab-size 50304
    --micro-batch-size 2 --global-batch-size 16 --recompute-granularity full --steps 3
    --warmup-steps 2)
  TRAIN_MODEL=(--model-preset pythia-160m --vocab-size 50304 --micro-batch-size 2
    --global-batch-size 8 --train-iters 20)
  BENCH_KERNELS=()
fi
# The fast path as Megatron-LM's GPU recipes run it; the local path without any fusion.
FAST_FLAGS=(--bf16 --cross-entropy-loss-fusion)
LOCAL_FLAGS=(--bf16 --transformer-impl local --no-bias-swiglu-fusion --no-bias-gelu-fusion
  --no-bias-dropout-fusion --no-rope-fusion --no-gradient-accumulation-fusion)

if has_step env; then
  if [ "$DRY" = 1 ]; then
    run_step env 60 "$OUT/env.txt" "$PY" -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, "cuda:", torch.cuda.is_available())'
  else
    run_step env 60 "$OUT/env.txt" bash -c "
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
      nvcc --version | tail -n 2
      $PY -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, \"SMs\")'
      $PY -c 'from importlib.metadata import version; print(\"megatron-core\", version(\"megatron-core\"))' || echo 'megatron-core missing: install it, or pass --wheels (see --prepare)'
      $PY -c 'import transformer_engine as te; print(\"transformer_engine\", te.__version__)' || echo 'transformer_engine missing: the fast path falls back to local layers'
      nproc"
  fi
  gather
fi

if has_step build; then
  if [ "$DRY" = 1 ]; then
    # What needs no GPU: the Triton kernels compiled ahead of time for sm_80/sm_90.
    run_step build 300 "$OUT/build.log" "$PY" -m pytest -q -p no:cacheprovider \
      tests/ops/test_splice_triton_aot.py
  else
    # Unless TORCH_CUDA_ARCH_LIST says otherwise, torch builds for the GPUs it sees.
    run_step build 300 "$OUT/build.log" bash -c "
      MAX_JOBS=\$(nproc) $PY setup.py build_ext --inplace &&
      $PY -c 'import torch, megatron_ponder._C as ext; print(\"extension loaded:\", ext.__file__)'"
  fi
  gather
fi

if has_step tests; then
  # Kernel tests (GPU cases run here, interpreter cases too), the model with each backend and
  # the execution path's tests.
  run_step tests 300 "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider -rs \
    tests/ops tests/model/test_splice_backend_in_model.py tests/model/test_execution.py
  gather
fi

if has_step bench; then
  run_step bench 240 "$OUT/bench.txt" "$PY" tools/bench_kernels.py --variant both \
    "${BENCH_KERNELS[@]}" --json "$OUT/bench_kernels.json"
  gather
fi

# The same run on the fast path (Transformer Engine where installed, fusions) and on the local
# path: the start-up block of each log names its path; their losses must agree within bf16's
# precision over the steps.
FASTPATH_RUN=("$PY" pretrain_ponder.py --mock-data --tokenizer-type NullTokenizer
  --num-latent-thoughts 1 --jacobi-iterations 3 --log-interval 1 --eval-iters 0 --num-workers 0
  --seed 1 "${FAST_MODEL[@]}")
if has_step fastpath; then
  run_step fastpath 240 "$OUT/fastpath.txt" bash -c '
    out=$1; shift
    "$@" '"${FAST_FLAGS[*]}"' > "$out/fastpath_te.log" 2>&1 || { tail -n 20 "$out/fastpath_te.log"; exit 1; }
    "$@" '"${LOCAL_FLAGS[*]}"' > "$out/fastpath_local.log" 2>&1 || { tail -n 20 "$out/fastpath_local.log"; exit 1; }
    grep -h "execution (" "$out/fastpath_te.log" "$out/fastpath_local.log"
    '"$PY"' tools/plot_loss.py "$out/fastpath_te.log" "$out/fastpath_local.log" --labels fast local --compare --rtol 0.03' \
    fastpath "$OUT" "${FASTPATH_RUN[@]}"
  gather
fi

if has_step bench_train; then
  # Llama-410M: vanilla and K=1 J=3 on the fast path, and a profile of one step of each.
  run_step bench_train 240 "$OUT/bench_train.txt" "$PY" tools/bench_train.py "${BENCH_410M[@]}" \
    "${FAST_FLAGS[@]}" --variants 0:0 1:3 --profile-top 15 --json "$OUT/bench_train.json"
  gather
fi

if has_step bench_1.4b; then
  run_step bench_1.4b 300 "$OUT/bench_1.4b.txt" "$PY" tools/bench_train.py \
    "${BENCH_1B[@]}" "${FAST_FLAGS[@]}" --variants 0:0 1:3 --json "$OUT/bench_1.4b.json"
  gather
fi

if has_step features; then
  # The training features the CPU tests cover, once on the device (tiny model): fp16 loss
  # scaling, async checkpoints, params norm, the torch profiler, then a resume.
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
  gather
fi

# K=1, J=3 with the fused splice and with the torch splice (same losses expected; the time
# difference is the fused kernel's end-to-end effect).
TRAIN=("$PY" -m torch.distributed.run --nproc-per-node 1 pretrain_ponder.py --mock-data
  --tokenizer-type NullTokenizer --num-latent-thoughts 1 --jacobi-iterations 3 --bf16
  --log-interval 5 --eval-iters 0 --num-workers 0 --seed 1 "${TRAIN_MODEL[@]}")
if has_step train; then
  run_step train 180 "$OUT/train.log" "${TRAIN[@]}"
  gather
fi
if has_step train_torch; then
  run_step train_torch 180 "$OUT/train_torch.log" env MEGATRON_PONDER_SPLICE_BACKEND=torch \
    "${TRAIN[@]}"
  gather
fi

echo "== summary ($((SECONDS - start_all))s in all)"
cat "$summary"
for file in "$OUT/env.txt" "$OUT/fastpath.txt"; do
  [ -f "$file" ] && cat "$file"
done
if [ -f "$OUT/bench.txt" ]; then
  grep -E "^device:|^goal|^ERROR|^skipped" "$OUT/bench.txt"
fi
for file in "$OUT/bench_train.txt" "$OUT/bench_1.4b.txt"; do
  [ -f "$file" ] && grep -E "^\||^top" "$file"
done
echo "all results: $OUT/gpu_check.json"
exit $failed
