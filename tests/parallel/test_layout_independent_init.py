"""Initial weights depend on the seed only: every layout builds the one-process model.

Each layout's weights, tensor-parallel shards gathered (SwiGLU's fused [gate; up] and the fused
grouped-query QKV included) and pipeline stages under global layer numbers, must equal one
process's bit for bit; and pretrain's logged losses at TP2 x PP2 (x DP2) must equal one
process's, without copying any weights between runs.
"""

import numpy as np
import pytest

from tests.distributed import run_ranks
from tests.parallel.ranks import built_model_weights
from tests.training.runs import pretrain_from_flags

MODELS = {
    # 4 layers: two per pipeline stage; grouped-query attention; 256 = padded vocab at TP 1 and 2.
    "llama": dict(arch="llama", num_layers=4, hidden_size=32, num_attention_heads=4,
                  num_query_groups=2, ffn_hidden_size=64, vocab_size=256),
    "gpt_neox": dict(arch="gpt_neox", num_layers=4, hidden_size=32, num_attention_heads=4,
                     vocab_size=256),
}
SEED = 11
LAYOUTS = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 4: [(2, 2)]}


def _cases(world):
    return [dict(model=MODELS[arch], tp=tp, pp=pp, seed=SEED, name=f"{arch} tp{tp} pp{pp}")
            for tp, pp in LAYOUTS[world] for arch in MODELS]


def _merged(per_rank, index):
    """One case's full weights: tensor-parallel rank 0 of every pipeline stage."""
    merged = {}
    for results in per_rank:
        result = results[index]
        if result["tp_rank"] == 0:
            assert not set(result["weights"]) & set(merged), "a parameter lives on two stages"
            merged.update(result["weights"])
    return merged


@pytest.fixture(scope="module")
def one_process():
    cases = _cases(1)
    results = run_ranks(built_model_weights, 1, cases, timeout=600)
    return {case["model"]["arch"]: _merged(results, index) for index, case in enumerate(cases)}


@pytest.mark.parametrize("world", [2, 4])
def test_every_layout_builds_the_one_process_weights(world, one_process):
    cases = _cases(world)
    per_rank = run_ranks(built_model_weights, world, cases, timeout=900)
    for index, case in enumerate(cases):
        weights, expected = _merged(per_rank, index), one_process[case["model"]["arch"]]
        assert set(weights) == set(expected), (case["name"], set(weights) ^ set(expected))
        for name, value in expected.items():
            np.testing.assert_array_equal(weights[name], value, err_msg=f"{case['name']}: {name}")


def test_a_different_seed_gives_different_weights(one_process):
    other = run_ranks(built_model_weights, 1, [dict(_cases(1)[0], seed=SEED + 1)], timeout=600)
    weights = _merged(other, 0)
    expected = one_process["llama"]
    assert not np.array_equal(weights["decoder.layers.3.mlp.linear_fc1.weight"],
                              expected["decoder.layers.3.mlp.linear_fc1.weight"])
    np.testing.assert_array_equal(weights["decoder.final_layernorm.weight"],
                                  expected["decoder.final_layernorm.weight"])


FLAGS = [
    "--model-arch", "llama", "--num-layers", "4", "--hidden-size", "32",
    "--num-attention-heads", "4", "--num-query-groups", "2", "--ffn-hidden-size", "64",
    "--seq-length", "16", "--mock-data", "--tokenizer-type", "NullTokenizer",
    "--vocab-size", "200", "--micro-batch-size", "2", "--global-batch-size", "8",
    "--lr", "3e-3", "--lr-warmup-iters", "0", "--lr-decay-iters", "10", "--train-iters", "3",
    "--num-workers", "0", "--log-interval", "1", "--eval-iters", "0", "--seed", "3",
    "--num-latent-thoughts", "1", "--random-jacobi-iterations",
]


def _logged_losses(world, *layout):
    results = run_ranks(pretrain_from_flags, world, FLAGS + list(layout), timeout=900)
    return [r["train_losses"] for r in results if r["train_losses"][0] is not None]


@pytest.mark.parametrize("world, layout", [
    (4, ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
         "--sequence-parallel")),
    pytest.param(8, ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                     "--sequence-parallel"), marks=pytest.mark.slow),
])
def test_logged_losses_match_one_process_without_copying_weights(world, layout):
    expected = _logged_losses(1)[0]
    logged = _logged_losses(world, *layout)
    assert logged, "no rank logged the loss"
    for losses in logged:
        np.testing.assert_allclose(losses, expected, rtol=1e-4)
