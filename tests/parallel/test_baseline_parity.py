"""The baselines (Pause, Loop), the cheaper-training options (--ponder-grad-passes,
--ponder-warmup-iters) and --rampup-batch-size train under tensor + sequence parallelism,
pipeline parallelism and data parallelism exactly like one process: the same initial weights,
losses, gradient norms, first-step gradients and final weights within 1e-5 (the same checks as
test_layout_parity.py). The pipeline runs every method's passes with the same per-pass driver
as one process (one chunk per pass)."""

import pytest

from tests.distributed import run_ranks
from tests.parallel.ranks import case_flags, run_cases
from tests.parallel.test_layout_parity import STEPS, check_against_reference

VARIANTS = {
    "pause": ("llama", ("--ponder-method", "pause")),
    "loop": ("gpt_neox", ("--ponder-method", "loop")),
    "grad-passes": ("llama", ("--ponder-grad-passes", "2")),
    "warmup": ("gpt_neox", ("--ponder-warmup-iters", "1")),
    # Steps of 4, 4, then 8 samples: the micro-batch count changes between steps.
    "rampup": ("llama", ("--rampup-batch-size", "4", "4", "8")),
}
LAYOUTS = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]
# One method on every kind of parallelism at once (8 ranks): make test-slow.
FULL_LAYOUT_VARIANTS = ["loop", "grad-passes"]


@pytest.fixture(scope="module")
def reference():
    cases = [dict(name=name, flags=case_flags(arch, 1, 1, 1, *extra), steps=STEPS)
             for name, (arch, extra) in VARIANTS.items()]
    results = run_ranks(run_cases, 1, cases, timeout=600)[0]
    return {r["name"]: r for r in results}


def test_baselines_and_cheaper_training_match_one_process(reference):
    cases = [dict(name=f"{name} tp{tp} pp{pp} dp{dp}", flags=case_flags(arch, 1, tp, pp, *extra),
                  steps=STEPS, base=name, layout=(tp, pp, dp), thoughts=1)
             for name, (arch, extra) in VARIANTS.items() for tp, pp, dp in LAYOUTS]
    _check(cases, reference, world=2)


@pytest.mark.slow
def test_tp2_pp2_dp2_matches_one_process(reference):
    cases = [dict(name=f"{name} tp2 pp2 dp2", flags=case_flags(VARIANTS[name][0], 1, 2, 2,
                                                              *VARIANTS[name][1]),
                  steps=STEPS, base=name, layout=(2, 2, 2), thoughts=1)
             for name in FULL_LAYOUT_VARIANTS]
    _check(cases, reference, world=8)


def _check(cases, reference, world):
    per_rank = run_ranks(run_cases, world, cases, timeout=1200)
    for index, case in enumerate(cases):
        ranks = [results[index] for results in per_rank]
        check_against_reference(case, ranks, reference[case["base"]])
