"""A checkpoint saved at one parallel layout loads at another with the same loss.

dist_checkpointing reshards tensor-parallel shards and pipeline stages if every sharded key is
global (layer numbers counted across stages). The saved run's last validation loss and the
loaded run's validation loss (same weights, same validation batches, fixed J) must agree.
"""

import pytest

from tests.distributed import run_ranks
from tests.parallel.ranks import case_flags, pretrain_expecting_error_then_pretrain
from tests.training.runs import pretrain_from_flags

TOLERANCE = 1e-5
# Four layers, so that a pipeline stage holds several (local numbers 0, 1; global 0..3).
FOUR_LAYERS = ["--num-layers", "4", "--train-iters", "2"]


def _flags(arch, k, tp, pp, *extra):
    return case_flags(arch, k, tp, pp, *FOUR_LAYERS, *extra)


def _validation_loss(results):
    losses = {tuple(v) for r in results for v in r["validation"]}
    assert len(losses) == 1, losses  # every loss-holding rank agrees; one evaluation
    (iteration, loss), = losses
    assert iteration == 2
    return loss


def test_tp2_pp2_checkpoint_loads_in_one_process(tmp_path):
    save = str(tmp_path / "ckpt")
    saved = run_ranks(pretrain_from_flags, 4,
                      _flags("llama", 2, 2, 2, "--save", save, "--use-distributed-optimizer"),
                      timeout=600)
    # Only the last pipeline stage (ranks 2, 3) knows losses.
    assert all(r["validation"] == [] for r in saved[:2])
    expected = _validation_loss(saved[2:])

    load = ["--load", save, "--use-distributed-optimizer"]
    message, loaded = run_ranks(
        pretrain_expecting_error_then_pretrain, 1, _flags("llama", 2, 1, 1, *load),
        _flags("llama", 2, 1, 1, *load, "--no-load-optim"), timeout=600)[0]
    # The distributed optimizer's state cannot follow the model to another layout: say so.
    assert message is not None and "CheckpointError" in message
    assert "{'tp': 2, 'pp': 2}" in message and "--no-load-optim" in message
    # Loaded at iteration 2 = --train-iters: no training, only the final validation.
    assert loaded["train_losses"] == []
    assert abs(_validation_loss([loaded]) - expected) <= TOLERANCE


@pytest.mark.slow
def test_one_process_checkpoint_loads_at_tp2_pp2_dp2(tmp_path):
    save = str(tmp_path / "ckpt")
    saved = run_ranks(pretrain_from_flags, 1, _flags("gpt_neox", 1, 1, 1, "--save", save),
                      timeout=600)
    loaded = run_ranks(pretrain_from_flags, 8,
                       _flags("gpt_neox", 1, 2, 2, "--load", save, "--no-load-optim"),
                       timeout=900)
    # megatron orders ranks tensor-, data-, then pipeline-parallel: ranks 4-7 are the last stage.
    assert all(r["validation"] == [] for r in loaded[:4])
    assert abs(_validation_loss(loaded[4:]) - _validation_loss(saved)) <= TOLERANCE


def _losses(results):
    """The training losses of a run (known on the last pipeline stage's first ranks)."""
    known = [r["train_losses"] for r in results if r["train_losses"] and
             r["train_losses"][0] is not None]
    assert known and all(losses == known[0] for losses in known)
    return known[0]


def test_fully_reshardable_optimizer_state_moves_from_pp2_to_tp2(tmp_path):
    save = str(tmp_path / "ckpt")

    def flags(tp, pp, iterations, *extra):
        return case_flags("gpt_neox", 1, tp, pp, "--train-iters", str(iterations),
                          "--use-distributed-optimizer", "--dist-ckpt-optim-fully-reshardable",
                          *extra)

    uninterrupted = _losses(run_ranks(pretrain_from_flags, 2, flags(1, 2, 4), timeout=600))
    run_ranks(pretrain_from_flags, 2, flags(1, 2, 2, "--save", save), timeout=600)
    resumed = _losses(run_ranks(pretrain_from_flags, 2, flags(2, 1, 4, "--load", save),
                                timeout=600))
    assert resumed == pytest.approx(uninterrupted[2:], abs=TOLERANCE)
    # The comparison can tell: without the Adam moments the same weights train differently.
    fresh = _losses(run_ranks(pretrain_from_flags, 2,
                              flags(2, 1, 4, "--load", save, "--no-load-optim"), timeout=600))
    assert max(abs(a - b) for a, b in zip(fresh, uninterrupted[2:])) > 100 * TOLERANCE
