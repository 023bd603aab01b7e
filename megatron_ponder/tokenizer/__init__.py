"""Tokenizers with Megatron-LM's interface (``vocab_size``, ``eod``, ``pad``, ``tokenize``).

Megatron-LM's ``--tokenizer-type`` values, built the same way for training and for
``tools/preprocess_data.py``; megatron-core's own tokenizers where megatron-core has a usable one
(see ``build.py`` for which type uses which). Any of them can be the ``tokenizer`` of
megatron-core's ``GPTDatasetConfig``. Typical use::

    from megatron_ponder.tokenizer import build_tokenizer, TokenizerSpec
    tokenizer = build_tokenizer()                      # GPT-NeoX-20B, offline
    tokenizer.tokenize("Hello world")                  # [12092, 1533]
    tokenizer.padded_vocab_size(tensor_model_parallel_size=1)   # 50304
"""

from megatron_ponder.tokenizer.base import (
    NO_PAD_ID,
    TextTokenizer,
    TokenizerError,
    padded_vocab_size,
)
from megatron_ponder.tokenizer.build import (
    DEFAULT_TOKENIZER_MODEL,
    GPT2_BPE_TOKENIZER,
    HUGGING_FACE_TOKENIZER,
    NULL_TOKENIZER,
    TOKENIZER_TYPES,
    TokenizerSpec,
    build_tokenizer,
    check_tokenizer_flags,
)
from megatron_ponder.tokenizer.huggingface import HuggingFaceTokenizer, load_gpt_neox_20b
from megatron_ponder.tokenizer.megatron_core import (
    SENTENCEPIECE_TOKENIZERS,
    TIKTOKEN_PATTERNS,
    TIKTOKENIZER,
    MegatronCoreTokenizer,
)
from megatron_ponder.tokenizer.tiktoken_bpe import TiktokenTokenizer

__all__ = [
    "DEFAULT_TOKENIZER_MODEL",
    "GPT2_BPE_TOKENIZER",
    "HUGGING_FACE_TOKENIZER",
    "NO_PAD_ID",
    "NULL_TOKENIZER",
    "SENTENCEPIECE_TOKENIZERS",
    "TIKTOKENIZER",
    "TIKTOKEN_PATTERNS",
    "TOKENIZER_TYPES",
    "HuggingFaceTokenizer",
    "MegatronCoreTokenizer",
    "TextTokenizer",
    "TiktokenTokenizer",
    "TokenizerError",
    "TokenizerSpec",
    "build_tokenizer",
    "check_tokenizer_flags",
    "load_gpt_neox_20b",
    "padded_vocab_size",
]
