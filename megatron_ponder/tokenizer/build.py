"""Build a tokenizer from Megatron-LM's tokenizer flags."""

import os
from dataclasses import dataclass
from typing import Optional

from megatron_ponder.tokenizer.base import TextTokenizer, TokenizerError
from megatron_ponder.tokenizer.huggingface import (
    GPT_NEOX_20B_NAME,
    HuggingFaceTokenizer,
    is_gpt_neox_20b_name,
    load_gpt_neox_20b,
)
from megatron_ponder.tokenizer.null import NullTokenizer
from megatron_ponder.tokenizer.tiktoken_bpe import TiktokenTokenizer

HUGGING_FACE_TOKENIZER = "HuggingFaceTokenizer"
GPT2_BPE_TOKENIZER = "GPT2BPETokenizer"
NULL_TOKENIZER = "NullTokenizer"
TOKENIZER_TYPES = (HUGGING_FACE_TOKENIZER, GPT2_BPE_TOKENIZER, NULL_TOKENIZER)
DEFAULT_TOKENIZER_MODEL = GPT_NEOX_20B_NAME


@dataclass(frozen=True)
class TokenizerSpec:
    """Megatron-LM's tokenizer flags. Small and picklable, so worker processes rebuild from it."""

    tokenizer_type: str = HUGGING_FACE_TOKENIZER
    """``--tokenizer-type``: one of ``TOKENIZER_TYPES``."""

    tokenizer_model: Optional[str] = None
    """``--tokenizer-model``. HuggingFaceTokenizer: a tokenizer.json file, a directory holding
    one, or a hub name (``EleutherAI/gpt-neox-20b`` and ``EleutherAI/pythia-*`` resolve to the
    offline copy); None means GPT-NeoX-20B. GPT2BPETokenizer: a ``.tiktoken`` ranks file; None
    means the one shipped with openai-whisper."""

    vocab_file: Optional[str] = None
    """``--vocab-file``: GPT-2 vocab.json (GPT2BPETokenizer, with ``merge_file``)."""

    merge_file: Optional[str] = None
    """``--merge-file``: GPT-2 merges.txt (GPT2BPETokenizer, with ``vocab_file``)."""

    vocab_size: Optional[int] = None
    """``--vocab-size``: NullTokenizer only (ids 0..vocab_size-1, EOD = vocab_size)."""


def build_tokenizer(spec: Optional[TokenizerSpec] = None) -> TextTokenizer:
    """The tokenizer ``spec`` describes; no argument gives the default GPT-NeoX-20B."""
    spec = spec or TokenizerSpec()
    if spec.tokenizer_type == HUGGING_FACE_TOKENIZER:
        return _build_hugging_face(spec.tokenizer_model)
    if spec.tokenizer_type == GPT2_BPE_TOKENIZER:
        if spec.vocab_file is not None or spec.merge_file is not None:
            if spec.vocab_file is None or spec.merge_file is None:
                raise TokenizerError("GPT2BPETokenizer needs both --vocab-file and --merge-file")
            return HuggingFaceTokenizer.from_gpt2_files(spec.vocab_file, spec.merge_file)
        return TiktokenTokenizer(spec.tokenizer_model)
    if spec.tokenizer_type == NULL_TOKENIZER:
        if spec.vocab_size is None:
            raise TokenizerError("NullTokenizer needs --vocab-size")
        return NullTokenizer(spec.vocab_size)
    raise TokenizerError(
        f"unknown tokenizer type {spec.tokenizer_type!r}; expected one of {list(TOKENIZER_TYPES)}"
    )


def _build_hugging_face(model: Optional[str]) -> HuggingFaceTokenizer:
    if model is None:
        return load_gpt_neox_20b()
    if os.path.exists(model):
        return HuggingFaceTokenizer.from_file(model)
    if is_gpt_neox_20b_name(model):
        try:
            return load_gpt_neox_20b()
        except TokenizerError as offline_error:
            try:
                return HuggingFaceTokenizer.from_hub(model)
            except TokenizerError as hub_error:
                raise TokenizerError(f"{offline_error}; {hub_error}") from hub_error
    return HuggingFaceTokenizer.from_hub(model)
