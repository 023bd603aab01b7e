#!/usr/bin/env python
"""Time and memory of the seed-only initialisation (megatron_ponder/model/init.py) on CPU.

Builds one process's model of a preset three ways and reports: allocation alone
(``perform_initialization=False``), the default build (megatron-core's own initialisation,
then every weight re-drawn from the seed), and the re-draw alone on the built model, with how
far the resident set grew above its size just before the re-draw (Linux's peak-RSS counter,
VmHWM, reset through /proc/self/clear_refs).

Example:
  python tools/measure_init_cost.py --model-preset pythia-160m
"""

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.process_memory import peak_rss_growth_mib, reset_peak_rss, rss_kib  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-preset", default="pythia-160m")
    parser.add_argument("--vocab-size", type=int, default=50304)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import torch

    from megatron_ponder import mcore
    from megatron_ponder.config import ModelConfig, PonderConfig
    from megatron_ponder.model import build_model
    from megatron_ponder.model.init import initialize_weights
    from megatron_ponder.training.presets import get_preset

    mcore.init(single_process=True)
    preset = {key: value for key, value in get_preset(args.model_preset).items()
              if key in ModelConfig.__dataclass_fields__}
    model_config = ModelConfig(**preset, vocab_size=args.vocab_size)

    def timed_build(**kwargs):
        start = time.perf_counter()
        model = build_model(model_config, PonderConfig(), seed=args.seed, **kwargs)
        return model, time.perf_counter() - start

    _, allocation = timed_build(perform_initialization=False)
    model, default = timed_build()
    parameters = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters())
    before = rss_kib()
    reset_peak_rss()
    start = time.perf_counter()
    initialize_weights(model, args.seed)
    redraw = time.perf_counter() - start
    growth = peak_rss_growth_mib(before)
    print(f"{args.model_preset}: {parameters / 1e6:.1f}M parameters (largest tensor "
          f"{largest * 4 / 2**20:.0f} MiB in float32), {torch.get_num_threads()} threads")
    print(f"allocation only: {allocation:.2f} s; default build: {default:.2f} s; "
          f"seed-only re-draw alone: {redraw:.2f} s, peak memory +{growth:.0f} MiB")


if __name__ == "__main__":
    main()
