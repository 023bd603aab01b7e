"""Functions executed on every rank by the multi-rank training tests."""

import dataclasses
import warnings


def pretrain_from_flags(flags):
    """One pretrain_ponder.py run in this process; returns its TrainingResult as a dict."""
    warnings.filterwarnings("ignore")
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.trainer import pretrain

    return dataclasses.asdict(pretrain(parse_args(flags)))
