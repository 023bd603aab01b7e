#!/usr/bin/env python3
"""Tokenize JSONL (or plain text) into Megatron .bin/.idx datasets, as Megatron-LM's tool does.

Example (the default tokenizer is GPT-NeoX-20B, the Pythia tokenizer, read offline):

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
        --append-eod --workers 8
    # -> data/corpus_text_document.bin and data/corpus_text_document.idx
    python tools/preprocess_data.py --input pile/train --output-prefix data/pile \\
        --append-eod --workers 16 --partitions 4    # a directory of .jsonl.zst shards

Exit status: 0 on success, 1 on bad input or arguments (the message names file:line),
2 on a usage error, 130 when interrupted. Nothing is left under the output names unless the
run completes.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.data.preprocess import (
    JSONL,
    PreprocessConfig,
    PreprocessError,
    available_cpus,
    run_preprocessing,
)
from megatron_ponder.flags import OneLineErrorParser, add_arguments, explicit_values, \
    from_arguments  # noqa: E402
from megatron_ponder.tokenizer.config import TokenizerConfig  # noqa: E402

EXIT_INPUT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that the run cleans up like on Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, PreprocessConfig, "preprocessing",
                  defaults={"workers": available_cpus()})
    # Preprocessing pads nothing: the vocabulary is the tokenizer's own.
    add_arguments(parser, TokenizerConfig, "tokenizer", exclude=("make_vocab_size_divisible_by",))
    return parser


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    config = from_arguments(PreprocessConfig, args,
                            tokenizer=from_arguments(TokenizerConfig, args).spec())
    if "json_keys" in explicit_values(args, PreprocessConfig) and config.input_format != JSONL:
        raise PreprocessError("--json-keys applies to --input-format jsonl only")
    return config


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        summary = run_preprocessing(config_from_args(args))
    except PreprocessError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("terminated: no output was written", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(summary.format())
    return 0


def _raise_terminated(signum, frame):
    raise _Terminated()


if __name__ == "__main__":
    sys.exit(main())
