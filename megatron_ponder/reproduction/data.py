"""The reproduction's data at CPU scale: the default corpus with a small BPE trained on its
training split, and held-out text from another domain (Python's tutorial, from Debian's
python3.11-doc) that no arm trains on."""

import glob
import os
from typing import List, Tuple

from megatron_ponder.data.default_corpus import prepare_default_corpus, prepare_default_jsonl
from megatron_ponder.data.default_corpus.sources import extract_debian_packages, \
    fetch_debian_packages
from megatron_ponder.tokenizer import TokenizerSpec
from megatron_ponder.tokenizer.train_bpe import iter_jsonl_texts, train_byte_level_bpe

HELD_OUT_PACKAGE = "python3.11-doc"
HELD_OUT_GLOB = "usr/share/doc/python3.11/html/_sources/tutorial/*.rst.txt"


def prepare_small_corpus(corpus_dir: str, vocab_size: int, workers: int = 1
                         ) -> Tuple[List[str], str]:
    """(training flags, validation prefix): the default corpus tokenized with a byte-level
    BPE of ``vocab_size`` trained on its training split (each step skipped when done)."""
    jsonl_paths, _ = prepare_default_jsonl(corpus_dir)
    tokenizer_path = os.path.join(corpus_dir, "tokenizers", f"bpe-{vocab_size}",
                                  "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
        train_byte_level_bpe(iter_jsonl_texts([jsonl_paths["train"]]), vocab_size,
                             tokenizer_path)
    corpus = prepare_default_corpus(
        output_dir=corpus_dir, workers=workers,
        tokenizer=TokenizerSpec(tokenizer_model=tokenizer_path))
    flags = corpus.data_args() + ["--tokenizer-model", tokenizer_path]
    return flags, corpus.valid_prefix


def prepare_held_out_text(cache_dir: str, output_path: str) -> str:
    """Python 3.11's tutorial (reST sources) as one UTF-8 text file, built once."""
    if os.path.isfile(output_path):
        return output_path
    archives = fetch_debian_packages([HELD_OUT_PACKAGE], os.path.join(cache_dir, "downloads"))
    root = extract_debian_packages(archives, os.path.join(cache_dir, "extracted"))
    files = sorted(glob.glob(os.path.join(root, HELD_OUT_GLOB)))
    if not files:
        raise FileNotFoundError(f"no {HELD_OUT_GLOB} in {HELD_OUT_PACKAGE}")
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    partial = output_path + ".partial"
    with open(partial, "w", encoding="utf-8") as out:
        for path in files:
            with open(path, encoding="utf-8") as handle:
                out.write(handle.read().strip() + "\n\n")
    os.replace(partial, output_path)
    return output_path
