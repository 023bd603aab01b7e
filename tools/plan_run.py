#!/usr/bin/env python
"""Plan a PonderLM-2 training run: FLOPs per token (all passes and vanilla), per-GPU memory of
candidate layouts (weights, gradients, optimizer state, activations of all passes), the layouts
that fit ranked by modelled step time (compute, communication on the cluster's topology, pipeline
bubble), and the wall time and GPU-hours of the whole run. ``--validate`` instead checks the
activation and communication models against CPU runs and the step time against published
Megatron-LM throughput (docs/planning.md).

Examples:
  python tools/plan_run.py --model-preset pythia-1.4b --num-latent-thoughts 1 \
      --random-jacobi-iterations --global-batch-size 1024 --train-tokens 300e9 \
      --gpus 64 --gpu-type h100
  python tools/plan_run.py --validate
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.planning.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
