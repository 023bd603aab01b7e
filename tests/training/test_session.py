"""``training_session``, the one start-up sequence: what resolving builds is what the run uses."""

from tests.distributed import run_ranks
from tests.training.runs import tokenizer_builds_and_world_check
from tests.training.test_pretrain import FLAGS


def test_a_run_builds_its_tokenizer_once_and_checks_its_resolved_world():
    # Two steps with validation after each: the datasets, the validation data and the model
    # all take the tokenizer resolving built.
    builds, refusal = run_ranks(tokenizer_builds_and_world_check, 1, FLAGS + [
        "--train-iters", "2", "--eval-interval", "1"])[0]
    assert builds == ["NullTokenizer"]
    assert refusal is not None and "resolved for 2 processes" in refusal
