"""Train a small byte-level BPE tokenizer on a JSONL corpus (``tools/train_tokenizer.py``).

Small-scale experiments need a small vocabulary: with the 50k GPT-NeoX vocabulary a model of
hidden size 128 spends ~90% of its parameters on the embedding and output layer, and a few
million training tokens never get past unigram statistics. A 2k-4k BPE trained on the corpus
itself fixes both. The result is an ordinary ``tokenizer.json`` (byte-level, like GPT-2 and
GPT-NeoX, so every string round-trips) with ``<|endoftext|>`` as id 0, usable anywhere a
``--tokenizer-model`` is (training, preprocessing, generation, HF export).
"""

import json
import os
from typing import Iterable, Iterator

EOD_TOKEN = "<|endoftext|>"


def iter_jsonl_texts(paths: Iterable[str], json_key: str = "text") -> Iterator[str]:
    """The ``json_key`` field of every line of every JSONL file, in order."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)[json_key]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{number}: no {json_key!r} string ({error})") from None


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, output_path: str) -> None:
    """Train a byte-level BPE of ``vocab_size`` entries (EOD included) and write it as a
    ``tokenizer.json``. Deterministic for the same texts and size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # 256 byte symbols + EOD are the alphabet; fewer leaves no room for a single merge.
    if vocab_size < 258:
        raise ValueError(f"a byte-level BPE needs vocab_size >= 258, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOD_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    partial = output_path + ".partial"
    tokenizer.save(partial)
    os.replace(partial, output_path)  # a complete file or none, whatever interrupts us
