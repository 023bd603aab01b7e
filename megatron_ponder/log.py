"""Rank-aware logging: ``get_logger(__name__)`` is a standard ``logging.Logger`` whose records
are emitted by rank 0 only, so N ranks do not print N copies of a line.

A record passed ``extra=EVERY_RANK`` is emitted by every rank, and in a multi-rank run prefixed
with the rank that wrote it (rank 0's own lines need no prefix). Output goes to the current ``sys.stdout`` at INFO level
through one handler on the ``megatron_ponder`` logger (configure that logger to change it).
"""

import logging
import os
import sys

ROOT = "megatron_ponder"
EVERY_RANK = {"every_rank": True}


def rank_and_world_size() -> tuple:
    """(rank, world size) from torch.distributed, else torchrun's environment, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank, record.world_size = rank_and_world_size()
        return record.rank == 0 or getattr(record, "every_rank", False)


class _RankFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if getattr(record, "every_rank", False) and getattr(record, "world_size", 1) > 1:
            return f"[rank {record.rank}] {text}"
        return text


class _StdoutHandler(logging.StreamHandler):
    """Writes to ``sys.stdout`` as it is at each record (test capture, redirections)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def _package_logger() -> logging.Logger:
    logger = logging.getLogger(ROOT)
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(_RankFormatter("%(message)s"))
        handler.addFilter(_RankFilter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (pass ``__name__``), under the rank-aware package logger."""
    _package_logger()
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".")
                             else f"{ROOT}.{name}")


# Third-party notices that say nothing to a user of this package: deprecations inside
# megatron-core, torch and transformers (their callers are megatron-core and transformers, not
# the user's code), and the fallbacks to megatron-core's local layers where Transformer Engine
# and Apex are missing, which is expected (the layer spec is megatron-core's local one).
_THIRD_PARTY_MODULES = r"(megatron\.core|torch|transformers)(\..*)?$"
_EXPECTED_NOTICES = ("Transformer Engine and Apex are not installed",
                     "Apex is not installed", "full scope is deprecated",
                     "Please use DTensor instead and we are deprecating ShardedTensor")


def quiet_third_party_warnings() -> None:
    """Hide the third-party deprecation warnings and expected notices above, in this process
    (the filters are installed when the package is imported, before megatron-core is). A
    process that is not rank 0 of a multi-rank run shows no warnings: rank 0 shows each once."""
    import warnings

    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY_MODULES)
    warnings.filterwarnings("ignore", message="|".join(_EXPECTED_NOTICES))
    if os.environ.get("RANK", "0") != "0":
        warnings.simplefilter("ignore")
