"""The torchrun that examples/pretrain_ponder.sh starts (run with bash):

    python -m megatron_ponder.training.launch [torchrun options] pretrain_ponder.py [flags]

It is torchrun (``torch.distributed.run``, same options) with two differences. The trainer's
flags are checked once, in this process, before any rank starts: a typo, missing data or
tokenizer, a contradiction between flags end the launch with the trainer's one ``error:`` line
(``resolve_config``, at the world size torchrun will start). And when the ranks stop on an
error they reported in one line themselves (rank 0 printed it; see ``one_line_errors``),
torchrun's report of the failed child processes is left out; a crash keeps it, with the rank's
traceback.
"""

import os
import signal
import sys
from contextlib import contextmanager

from megatron_ponder.data.config import DataConfigError
from megatron_ponder.errors import FatalRunError
from megatron_ponder.tokenizer import TokenizerError
from megatron_ponder.training.resolve import ConfigError

ONE_LINE_ERRORS = (FatalRunError, ConfigError, DataConfigError, TokenizerError)
"""Errors that end a run with their message as one line: a run that cannot go on, flags that
contradict each other, dataset files that are missing or do not fit together, a tokenizer file
that does not load."""

ONE_LINE_ERROR_STATUS = 1


@contextmanager
def one_line_errors():
    """Turn an error of ``ONE_LINE_ERRORS`` into ``error: <message>`` on stderr (once, from
    rank 0, not a traceback from every rank) and exit status 1."""
    try:
        yield
    except ONE_LINE_ERRORS as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(ONE_LINE_ERROR_STATUS)


def check_trainer_flags(trainer_argv, world_size: int) -> None:
    """Parse and resolve the trainer's flags as ``world_size`` ranks will (a flag error exits
    with status 2, a configuration error with status 1, each as one line)."""
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.resolve import resolve_config

    with one_line_errors():
        resolve_config(parse_args(trainer_argv), world_size, note=lambda _message: None)


def _world_size(args) -> int:
    from torch.distributed.run import determine_local_world_size, parse_min_max_nnodes

    _, max_nodes = parse_min_max_nnodes(args.nnodes)
    return determine_local_world_size(args.nproc_per_node) * max_nodes


def reported_by_the_ranks(failures: dict) -> bool:
    """Whether failed ranks (global rank -> torchrun's ProcessFailure) stopped on a one-line
    error that rank 0 printed: rank 0 exited with that status without a crash record (the
    trainer's entry point records uncaught exceptions in torchrun's error file), and every
    other failure is the same or torchrun's own SIGTERM to the ranks left."""
    def one_line(failure) -> bool:
        return (failure.exitcode == ONE_LINE_ERROR_STATUS
                and not os.path.isfile(failure.error_file))

    if 0 not in failures or not one_line(failures[0]):
        return False
    return all(one_line(failure) or failure.exitcode == -signal.SIGTERM
               for failure in failures.values())


def main(argv=None) -> None:
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(sys.argv[1:] if argv is None else argv)
    check_trainer_flags(args.training_script_args, _world_size(args))
    # The agent's own log lines about a failed child repeat what its report says.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun.run(args)
    except ChildFailedError as error:
        if reported_by_the_ranks(error.failures):
            sys.exit(ONE_LINE_ERROR_STATUS)
        raise


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
