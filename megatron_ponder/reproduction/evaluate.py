"""Final evaluation of one arm's checkpoint (run by the reproduction as a subprocess).

    python -m megatron_ponder.reproduction.evaluate --load DIR --valid-prefix PREFIX \\
        [--eval-text FILE] --seq-length N --output eval.json

Scores the whole validation split (every token predicted once, windows of --seq-length) and,
with --eval-text, a UTF-8 text or JSONL file (one document per line's "text"; a plain text file
is one document) tokenized with the run's own tokenizer. Loss in nats per token.
"""

import argparse
import json
import os
import sys
import time
from typing import Iterator, List

from megatron_ponder.eval.perplexity import (held_out_perplexity, stream_windows,
                                             windows_perplexity)


def text_documents(path: str) -> Iterator[str]:
    """The documents of a UTF-8 text file (one) or JSONL file (one per line's "text")."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--eval-text {path} is not UTF-8 ({error})") from None
    if path.endswith((".jsonl", ".json")):
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"--eval-text {path}:{number}: not a JSON object with a "
                                     f"\"text\" string") from None
    else:
        yield text


def tokenized_documents(tokenizer, path: str) -> List[List[int]]:
    """Each document's ids followed by the end-of-document id, as training data is built."""
    return [tokenizer.tokenize(text) + [tokenizer.eod] for text in text_documents(path)
            if text.strip()]


def evaluate_checkpoint(load: str, valid_prefix: str, seq_length: int, eval_text: str = None,
                        batch_size: int = 16) -> dict:
    from megatron_ponder.hf.loading import load_model_and_tokenizer

    # The transformers-native model (converted in memory), on a GPU when there is one.
    model, tokenizer = load_model_and_tokenizer(load)
    start = time.time()
    result = {}
    valid = held_out_perplexity(model, valid_prefix, seq_length=seq_length,
                                batch_size=batch_size, show_progress=False)
    result["valid_loss"], result["valid_tokens"] = valid.nll, valid.tokens
    if eval_text:
        documents = tokenized_documents(tokenizer, eval_text)
        held_out = windows_perplexity(model, stream_windows(documents, seq_length), eval_text,
                                      seq_length, batch_size=batch_size, show_progress=False)
        result["heldout_loss"], result["heldout_tokens"] = held_out.nll, held_out.tokens
        result["eval_text"] = os.path.abspath(eval_text)
    result["eval_seconds"] = time.time() - start
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--load", required=True)
    parser.add_argument("--valid-prefix", required=True)
    parser.add_argument("--eval-text", default=None)
    parser.add_argument("--seq-length", type=int, required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        result = evaluate_checkpoint(args.load, args.valid_prefix, args.seq_length,
                                     args.eval_text)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    partial = args.output + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1, sort_keys=True)
    os.replace(partial, args.output)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
