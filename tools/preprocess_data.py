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
    INPUT_FORMATS,
    JSONL,
    TEXT_DOCUMENT_PER_FILE,
    TEXT_DOCUMENT_UNITS,
    PreprocessConfig,
    PreprocessError,
    run_preprocessing,
)
from megatron_ponder.tokenizer import TokenizerSpec
from megatron_ponder.training.cli import add_dataclass_arguments, build_dataclass
from megatron_ponder.training.config import TokenizerConfig

EXIT_INPUT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that the run cleans up like on Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
    )
    group = parser.add_argument_group("input data")
    group.add_argument(
        "--input", nargs="+", required=True, metavar="PATH",
        help="input files, globs (quote them; '**' recurses) or directories (their .jsonl/.json "
             "files, plain, .gz or .zst, recursively; with --input-format text every file); read "
             "in the order given, compressed files as a stream",
    )
    group.add_argument(
        "--input-format", choices=INPUT_FORMATS, default=JSONL,
        help="jsonl (default): one JSON object per line; text: plain UTF-8 text "
             "(see --text-document)",
    )
    group.add_argument(
        "--json-keys", nargs="+", default=None, metavar="KEY",
        help="keys of the JSON objects to tokenize, each into its own output dataset "
             "(default: text; jsonl only)",
    )
    group.add_argument(
        "--text-document", choices=TEXT_DOCUMENT_UNITS, default=TEXT_DOCUMENT_PER_FILE,
        help="with --input-format text: one document per file (default), or per block of "
             "lines separated by blank lines",
    )
    group.add_argument(
        "--split-sentences", action="store_true",
        help="split each document into sentences (a built-in rule-based splitter), stored as "
             "the document's sequences; outputs are <prefix>_<key>_sentence.bin/.idx",
    )
    group.add_argument(
        "--keep-newlines", action="store_true",
        help="with --split-sentences: keep the line breaks between sentences (otherwise the "
             "whitespace between sentences is dropped)",
    )
    group.add_argument(
        "--skip-invalid", action="store_true",
        help="skip and count invalid records (malformed JSON, missing key, non-string value, "
             "invalid UTF-8) instead of stopping at the first one",
    )

    # The training flags' tokenizer section, so both build the same tokenizer from the same flags.
    add_dataclass_arguments(parser, TokenizerConfig, "tokenizer")

    group = parser.add_argument_group("output data")
    group.add_argument("--append-eod", action="store_true",
                       help="append the tokenizer's end-of-document token to every document")
    group.add_argument(
        "--output-prefix", required=True,
        help="writes <prefix>_<key>_document.bin and .idx (directory must exist)",
    )
    group.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs (otherwise an existing output is an error)")

    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--workers", type=int, default=_available_cpus(),
        help="tokenizing processes; 1 tokenizes in the main process. The output is identical "
             "for any value (default: the usable CPUs, %(default)s here)",
    )
    group.add_argument(
        "--partitions", type=int, default=1,
        help="cut the input into N contiguous pieces (whole files, or line ranges of plain "
             "files) read and tokenized in parallel, each with --workers/N workers, then "
             "concatenated; the output is the same for any N (default: %(default)s)",
    )
    group.add_argument("--log-interval", type=int, default=100,
                       help="documents between progress reports (default: %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    if args.json_keys is not None and args.input_format != JSONL:
        raise PreprocessError("--json-keys applies to --input-format jsonl only")
    return PreprocessConfig(
        inputs=args.input,
        output_prefix=args.output_prefix,
        json_keys=args.json_keys or ["text"],
        input_format=args.input_format,
        text_document=args.text_document,
        tokenizer=TokenizerSpec.from_flags(build_dataclass(TokenizerConfig, args)),
        append_eod=args.append_eod,
        workers=args.workers,
        partitions=args.partitions,
        split_sentences=args.split_sentences,
        keep_newlines=args.keep_newlines,
        log_interval=args.log_interval,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
    )


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


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
