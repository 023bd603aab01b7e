"""Every (TP, PP, DP) layout in {1,2}^3 trains exactly like one process (gloo, CPU).

For both architectures and K in {1, 2}, with sequence parallelism whenever TP=2 and J drawn per
micro-batch (so pipeline steps contain pass-through chunks), each layout must reproduce the
one-process run: the same initial weights, bit for bit (tensor-parallel shards gathered,
pipeline stages under global layer numbers; initialization depends on the seed only), the loss
and every parameter's gradient after the first forward/backward (after the data-parallel
reduction) within 1e-5, the losses,
gradient norms and weights of three optimizer steps, and the J of every micro-batch on every
rank. Activation recomputation (full, selective) must give the same gradients, and the
distributed optimizer the same steps.

Each launch of N ranks runs all the layouts with TP x PP x DP = N one after the other (process
start-up and imports dominate the cost). ``make test`` runs every layout with two of the four
(architecture, K) combinations, chosen so that every layout sees both architectures and both
K; ``make test-slow`` runs the full product.
"""

import itertools

import numpy as np
import pytest

from tests.distributed import run_ranks
from tests.parallel.ranks import case_flags, run_cases

TOLERANCE = 1e-5
STEPS = 3
COMBOS = [("llama", 1), ("gpt_neox", 2), ("llama", 2), ("gpt_neox", 1)]
LAYOUTS = {2: [(2, 1, 1), (1, 2, 1), (1, 1, 2)],
           4: [(2, 2, 1), (2, 1, 2), (1, 2, 2)],
           8: [(2, 2, 2)]}
FULL = ("--recompute-granularity", "full")
SELECTIVE = ("--recompute-granularity", "selective")
DIST_OPT = ("--use-distributed-optimizer",)
# Recomputation and the distributed optimizer must not change a single number, so the default
# run switches them on in some cases (per layout, per combination of ``_two_combos``) instead
# of paying for more cases; the one-process reference runs every combination with each
# recompute granularity.
DEFAULT_EXTRAS = {
    2: [[FULL, ()], [(), SELECTIVE], [DIST_OPT, ()]],
    4: [[FULL, SELECTIVE], [DIST_OPT, ()], [(), DIST_OPT + FULL]],
    8: [[DIST_OPT + SELECTIVE, FULL]],
}
# K=0 (one pass per micro-batch) takes megatron's plain 1F1B schedule instead of the interleaved
# one: one case each on two pipeline layouts.
VANILLA = {2: [((1, 2, 1), ("llama", 0), ())], 4: [((2, 2, 1), ("gpt_neox", 0), ())], 8: []}


def _key(arch, k):
    return f"{arch}-K{k}"


@pytest.fixture(scope="module")
def reference():
    """One process: every (architecture, K) plain, then with each recompute granularity (same
    seed, so the same initial weights at this layout)."""
    vanilla = [combo for world in VANILLA for _, combo, _ in VANILLA[world]]
    cases = [dict(name=_key(arch, k), flags=case_flags(arch, k), steps=STEPS)
             for arch, k in COMBOS + vanilla]
    variants = [dict(name=f"{_key(arch, k)} {' '.join(extra)}", base=_key(arch, k),
                     flags=case_flags(arch, k, 1, 1, *extra), steps=STEPS)
                for arch, k in COMBOS for extra in (FULL, SELECTIVE)]
    results = run_ranks(run_cases, 1, cases + variants, timeout=600)[0]
    plain = {r["name"]: r for r in results[:len(cases)]}
    return plain, results[len(cases):], variants


def _two_combos(index):
    """Two (arch, K) per layout, together covering both architectures and both K."""
    return [COMBOS[(2 * index) % 4], COMBOS[(2 * index + 1) % 4]]


def _default_cases(world):
    return [(layout, combo, DEFAULT_EXTRAS[world][index][position])
            for index, layout in enumerate(LAYOUTS[world])
            for position, combo in enumerate(_two_combos(index))] + VANILLA[world]


def _full_product_cases(world):
    return [(layout, combo, ()) for layout in LAYOUTS[world] for combo in COMBOS]


def _cases(selection):
    cases = []
    for (tp, pp, dp), (arch, k), extra in selection:
        cases.append(dict(name=f"{_key(arch, k)} tp{tp} pp{pp} dp{dp} {' '.join(extra)}",
                          flags=case_flags(arch, k, tp, pp, *extra), steps=STEPS,
                          base=_key(arch, k), layout=(tp, pp, dp),
                          thoughts=k))
    return cases


def _assert_close(actual, expected, what, tolerance=TOLERANCE):
    error = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) -
                                np.asarray(expected, dtype=np.float64))))
    assert error <= tolerance, f"{what}: max error {error:.3g} > {tolerance}"
    return error


def _global_order(gathered, dp):
    """J lists gathered over data parallel ([rank 0's micro-batches, rank 1's, ...]) in the
    one-process order (global micro-batch index m * dp + rank)."""
    per_rank = len(gathered) // dp
    return [gathered[rank * per_rank + m] for m in range(per_rank) for rank in range(dp)]


def check_against_reference(case, ranks, reference_result):
    """All the comparisons for one case; ``ranks`` is every rank's result for it."""
    tp, pp, dp = case.get("layout", (1, 1, 1))
    assert len(ranks) == tp * pp * dp
    last_stage = [r for r in ranks if r["pp_rank"] == pp - 1]
    for r in ranks:
        if r["pp_rank"] != pp - 1:
            assert r["losses"] == [None] * STEPS, "only the last stage knows the loss"
    for r in last_stage:
        _assert_close(r["losses"], reference_result["losses"], f"{case['name']}: losses")
    for r in ranks:
        _assert_close(r["grad_norms"], reference_result["grad_norms"],
                      f"{case['name']}: grad norms")

    # J: every rank of the step agrees, and with the one-process run micro-batch by micro-batch.
    for step in range(STEPS):
        expected = reference_result["jacobi"][step]
        for r in ranks:
            assert _global_order(r["jacobi"][step], dp) == expected, (case["name"], step)
            per_rank = len(expected) // dp
            assert r["local_jacobi"][step] == expected[r["dp_rank"]::dp][:per_rank]
    if pp > 1 and case["thoughts"] > 0:
        # Pass-through chunks (a micro-batch with a smaller J than its step's longest) ran.
        assert any(len(set(r["local_jacobi"][step])) > 1
                   for r in ranks for step in range(STEPS)), "no step had varying J"

    # Weights and gradients, as full tensors: tensor-parallel rank 0 of every (PP, DP) pair.
    names = set(reference_result["final_weights"])
    for dp_rank in range(dp):
        holders = [r for r in ranks if r["tp_rank"] == 0 and r["dp_rank"] == dp_rank]
        assert sorted(r["pp_rank"] for r in holders) == list(range(pp))
        for kind in ("initial_weights", "grads", "final_weights"):
            merged = {}
            for r in holders:
                assert not set(r[kind]) & set(merged), "a parameter lives on two stages"
                merged.update(r[kind])
            assert set(merged) == names, (case["name"], kind, names ^ set(merged))
            for name in sorted(names):
                _assert_close(merged[name], reference_result[kind][name],
                              f"{case['name']} dp{dp_rank}: {kind} of {name}",
                              tolerance=0.0 if kind == "initial_weights" else TOLERANCE)


def test_recompute_gives_the_same_gradients(reference):
    plain, variants, cases = reference
    for case, result in zip(cases, variants):
        base = plain[case["base"]]
        for name, weight in base["initial_weights"].items():
            np.testing.assert_array_equal(result["initial_weights"][name], weight)
        check_against_reference(case, [result], base)


def _run_world(world, reference, selection):
    plain, _, _ = reference
    cases = _cases(selection)
    per_rank = run_ranks(run_cases, world, cases, timeout=900)
    for index, case in enumerate(cases):
        ranks = [results[index] for results in per_rank]
        assert all(r["name"] == case["name"] for r in ranks)
        check_against_reference(case, ranks, plain[case["base"]])


@pytest.mark.parametrize("world", [2, 4, 8])
def test_every_layout_matches_one_process(world, reference):
    _run_world(world, reference, _default_cases(world))


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4, 8])
def test_every_layout_and_combination_matches_one_process(world, reference):
    _run_world(world, reference, _full_product_cases(world))


def test_default_selection_covers_every_layout_with_both_archs_and_both_k():
    assert sorted(itertools.chain.from_iterable(LAYOUTS.values())) == sorted(
        itertools.product((1, 2), repeat=3))[1:]
    for world, layouts in LAYOUTS.items():
        cases = _default_cases(world)
        for layout in layouts:
            combos = [combo for case_layout, combo, _ in cases
                      if case_layout == layout and combo[1] > 0]
            assert {arch for arch, _ in combos} == {"llama", "gpt_neox"}
            assert {k for _, k in combos} == {1, 2}
    extras = [extra for world in LAYOUTS for _, _, extra in _default_cases(world)]
    for flag in ("full", "selective", "--use-distributed-optimizer"):
        assert sum(flag in extra for extra in extras) >= 2, flag
