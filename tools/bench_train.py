#!/usr/bin/env python
"""Time training steps of PonderLM-2 (K=1 and K=2 at fixed J=2 and 3) and vanilla of the same
model on whatever device is present (CUDA if available, else CPU): tokens/s, ms/step, TFLOP/s
over all passes, MFU where the peak is known, peak memory, and the ponder/vanilla step-time
ratio next to the FLOP ratio. Logic: megatron_ponder/training/benchmark.py.

Examples:
  python tools/bench_train.py --model-preset tiny --micro-batch-size 4 --global-batch-size 8
  python tools/bench_train.py --model-preset pythia-160m --seq-length 1024 --bf16 \
      --micro-batch-size 4 --global-batch-size 8 --steps 10 --json runs/bench_train.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.training.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
