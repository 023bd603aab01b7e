"""The baselines (Pause, Loop) and the cheaper-training options (--ponder-grad-passes,
--ponder-warmup-iters) train under tensor + sequence parallelism and data parallelism exactly
like one process: the same initial weights, losses, gradient norms, first-step gradients and
final weights within 1e-5 (the same checks as test_layout_parity.py). Pipeline parallelism
rejects them (validation)."""

import pytest

from tests.distributed import run_ranks
from tests.parallel.ranks import case_flags, run_cases
from tests.parallel.test_layout_parity import STEPS, check_against_reference

VARIANTS = {
    "pause": ("llama", ("--ponder-method", "pause")),
    "loop": ("gpt_neox", ("--ponder-method", "loop")),
    "grad-passes": ("llama", ("--ponder-grad-passes", "2")),
    "warmup": ("gpt_neox", ("--ponder-warmup-iters", "1")),
}
LAYOUTS = [(2, 1, 1), (1, 1, 2)]


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
    per_rank = run_ranks(run_cases, 2, cases, timeout=900)
    for index, case in enumerate(cases):
        ranks = [results[index] for results in per_rank]
        check_against_reference(case, ranks, reference[case["base"]])
