"""The rank-aware logger: rank 0 only by default, every rank on request (with a rank prefix in
multi-rank runs), output on the current stdout."""

import pytest

from megatron_ponder import log


@pytest.fixture
def rank(monkeypatch):
    def set_rank(rank, world_size):
        monkeypatch.setattr(log, "rank_and_world_size", lambda: (rank, world_size))
    return set_rank


def test_single_process_lines_are_plain(capsys, rank):
    rank(0, 1)
    log.get_logger("megatron_ponder.something").info("hello %d", 1)
    assert capsys.readouterr().out == "hello 1\n"


def test_rank_zero_only_unless_every_rank_is_asked(capsys, rank):
    logger = log.get_logger(__name__)
    rank(1, 2)
    logger.info("from rank 1")
    logger.warning("every rank", extra=log.EVERY_RANK)
    rank(0, 2)
    logger.info("from rank 0")
    assert capsys.readouterr().out == "[rank 1] every rank\nfrom rank 0\n"


def test_loggers_live_under_the_package_logger():
    assert log.get_logger("megatron_ponder.mcore.version").name == "megatron_ponder.mcore.version"
    assert log.get_logger("tools.generate").name == "megatron_ponder.tools.generate"
    assert log.get_logger("megatron_ponder").name == "megatron_ponder"


def test_third_party_deprecations_and_expected_notices_are_hidden(monkeypatch):
    import warnings

    monkeypatch.delenv("RANK", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        log.quiet_third_party_warnings()
        for message, category, module in (
                ("tp_group is None", DeprecationWarning, "megatron.core.tensor_parallel.layers"),
                ("script_method is deprecated", DeprecationWarning, "torch.jit._script"),
                ("renamed", FutureWarning, "transformers.modeling_utils"),
                ("Apex is not installed. Falling back to Torch Norm", UserWarning,
                 "megatron.core.models.backends"),
                ("a user's own deprecation", DeprecationWarning, "my_training_script"),
                ("a real problem", UserWarning, "megatron.core.optimizer")):
            warnings.warn_explicit(message, category, "file.py", 1, module=module)
    assert [str(w.message) for w in caught] == ["a user's own deprecation", "a real problem"]
