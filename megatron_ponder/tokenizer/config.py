"""``TokenizerConfig``: Megatron-LM's tokenizer flags, shared by training and preprocessing
(``megatron_ponder.flags`` makes the flags)."""

from dataclasses import dataclass
from typing import Optional, Tuple

from megatron_ponder.flags import Freezable, option
from megatron_ponder.tokenizer.build import TOKENIZER_TYPES, TokenizerSpec
from megatron_ponder.tokenizer.megatron_core import TIKTOKEN_PATTERNS

# The defaults are TokenizerSpec's (what build_tokenizer takes), written once there.
_SPEC = TokenizerSpec()


@dataclass
class TokenizerConfig(Freezable):
    """Which tokenizer (Megatron-LM's flags); it fixes the padded vocabulary size.
    ``TokenizerSpec`` (what ``build_tokenizer`` takes) has the same fields but the padding."""

    tokenizer_type: str = option(
        _SPEC.tokenizer_type, "tokenizer kind, as in Megatron-LM (the SentencePiece types, "
        "TikTokenizer, NullTokenizer and HuggingFaceTokenizer with a model directory or hub "
        "name are megatron-core's own tokenizers)", choices=TOKENIZER_TYPES)
    tokenizer_model: Optional[str] = option(
        _SPEC.tokenizer_model, "HuggingFaceTokenizer: a tokenizer.json, a directory or a hub "
        "name (default: the bundled GPT-NeoX-20B tokenizer, read offline); "
        "SentencePieceTokenizer, GPTSentencePieceTokenizer, Llama2Tokenizer: the SentencePiece "
        ".model file; TikTokenizer: the tiktoken JSON vocabulary; GPT2BPETokenizer without "
        "--vocab-file: a .tiktoken ranks file (default: GPT-2's, from openai-whisper)",
        metavar="PATH_OR_NAME")
    vocab_file: Optional[str] = option(
        _SPEC.vocab_file, "GPT2BPETokenizer: GPT-2's vocab.json (with --merge-file)")
    merge_file: Optional[str] = option(
        _SPEC.merge_file, "GPT2BPETokenizer: GPT-2's merges.txt (with --vocab-file)")
    vocab_size: Optional[int] = option(
        _SPEC.vocab_size, "NullTokenizer: ids 0..N-1, end-of-document N; TikTokenizer: "
        "vocabulary size including the special tokens (default there: 131072)")
    tiktoken_pattern: Optional[str] = option(
        _SPEC.tiktoken_pattern, "TikTokenizer: the pre-tokenization regex (default: v2)",
        choices=TIKTOKEN_PATTERNS)
    tiktoken_num_special_tokens: int = option(
        _SPEC.tiktoken_num_special_tokens,
        "TikTokenizer: ids reserved for special tokens, before the vocabulary's own")
    tiktoken_special_tokens: Tuple[str, ...] = option(
        _SPEC.tiktoken_special_tokens, "TikTokenizer: the named special tokens, which must "
        "include <unk> <s> </s> <mask> <pad> <cls> <sep> (default: those seven); </s> is the "
        "end-of-document token")
    tokenizer_special_tokens: Tuple[str, ...] = option(
        _SPEC.tokenizer_special_tokens, "special tokens to add to megatron-core's tokenizer "
        "(HuggingFaceTokenizer with a hub name or a tokenizer_config.json directory, the "
        "SentencePiece types; TikTokenizer: its named special tokens)")
    tokenizer_sentencepiece_legacy: bool = option(
        _SPEC.tokenizer_sentencepiece_legacy, "SentencePiece types: the legacy behaviour of "
        "SentencePiece's tokenizer")
    tokenizer_hf_use_fast: bool = option(
        _SPEC.tokenizer_hf_use_fast, "megatron-core's HuggingFaceTokenizer: load the fast "
        "(Rust) tokenizer")
    tokenizer_hf_include_special_tokens: bool = option(
        _SPEC.tokenizer_hf_include_special_tokens, "megatron-core's HuggingFaceTokenizer: add "
        "the tokenizer's special tokens (e.g. BOS) when tokenizing")
    trust_remote_code: bool = option(
        _SPEC.trust_remote_code, "megatron-core's HuggingFaceTokenizer: allow a hub "
        "tokenizer's own code to run")
    make_vocab_size_divisible_by: int = option(
        128, "pad the vocabulary to a multiple of this times the tensor-parallel size")

    def spec(self) -> TokenizerSpec:
        """What ``build_tokenizer`` needs."""
        return TokenizerSpec.from_flags(self)
