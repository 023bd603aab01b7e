"""Errors that end a run with one line instead of a traceback."""


class FatalRunError(RuntimeError):
    """The run cannot go on, for a reason its message states in one line (a damaged
    checkpoint, too many non-finite steps): pretrain_ponder.py prints that line on rank 0 and
    exits with status 1, without a traceback on every rank."""
