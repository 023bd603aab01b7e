"""--log-params-norm: the norm of all weights, each counted once across model-parallel ranks."""

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.model import build_model
from megatron_ponder.training.trainer import params_l2_norm
from tests.distributed import run_ranks
from tests.training.runs import pretrain_from_flags
from tests.training.test_pretrain import FLAGS


def test_one_process_norm_is_the_norm_of_every_weight(single_process):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt_neox", num_layers=2, hidden_size=32,
                                    num_attention_heads=4, vocab_size=64), PonderConfig())
    expected = torch.cat([p.detach().flatten() for p in model.parameters()]).norm().item()
    assert params_l2_norm(model) == pytest.approx(expected, rel=1e-6)


def test_tensor_parallel_ranks_report_the_one_process_norm():
    flags = FLAGS + ["--train-iters", "2", "--log-params-norm"]
    single = run_ranks(pretrain_from_flags, 1, flags)[0]["params_norms"]
    assert [iteration for iteration, _ in single] == [1, 2]
    # Same initial weights at TP=2 (drawn whole, then split); norms, biases of row-parallel
    # layers and other replicated weights must not count twice.
    for rank in run_ranks(pretrain_from_flags, 2, flags + ["--tensor-model-parallel-size", "2"]):
        assert [iteration for iteration, _ in rank["params_norms"]] == [1, 2]
        assert [norm for _, norm in rank["params_norms"]] == pytest.approx(
            [norm for _, norm in single], rel=1e-5)
