#!/usr/bin/env python3
"""Train a byte-level BPE tokenizer (tokenizer.json) on JSONL text.

Example (the small-vocabulary tokenizer of examples/reproduce_small.sh):

    python tools/train_tokenizer.py --input data/default/jsonl/train.jsonl \\
        --vocab-size 2048 --output data/default/tokenizers/bpe-2048/tokenizer.json

Use the result with ``--tokenizer-model PATH`` in training and tools/preprocess_data.py. Only the
training split should be given, so that validation text stays unseen.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.tokenizer.train_bpe import iter_jsonl_texts, train_byte_level_bpe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files")
    parser.add_argument("--json-key", default="text", help="field holding the text")
    parser.add_argument("--vocab-size", type=int, default=2048,
                        help="entries including <|endoftext|> (default: %(default)s)")
    parser.add_argument("--output", required=True, help="tokenizer.json to write")
    args = parser.parse_args(argv)
    for path in args.input:
        if not os.path.isfile(path):
            print(f"error: --input {path}: no such file", file=sys.stderr)
            return 1
    try:
        train_byte_level_bpe(iter_jsonl_texts(args.input, args.json_key), args.vocab_size,
                             args.output)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
