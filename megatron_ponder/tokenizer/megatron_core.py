"""megatron-core's tokenizers (``megatron.core.tokenizers``) behind this package's interface.

megatron-core's ``build_tokenizer`` is what Megatron-LM itself calls for its tokenizer flags, so
these types mean exactly what they mean there: SentencePieceTokenizer, GPTSentencePieceTokenizer
and Llama2Tokenizer all load a SentencePiece ``.model`` with megatron-core's SentencePiece
tokenizer (no BOS added, EOD = the model's ``</s>``); TikTokenizer loads a tiktoken JSON
vocabulary with ``--tiktoken-num-special-tokens`` ids reserved in front (EOD = ``</s>``);
NullTokenizer writes ids as text. megatron-core's HuggingFaceTokenizer (transformers'
``AutoTokenizer``) serves hub names and model directories.

What this module adds: flag checks that fail with one clear line before anything loads, and an
adapter with the ``TextTokenizer`` interface (a path-independent name, Megatron's vocabulary
padding, ``pad`` = -1 when there is no distinct pad token). megatron-core is imported only when
one of these tokenizers is built: the other tokenizers load without torch.
"""

import importlib.util
import os
from types import SimpleNamespace
from typing import List, Sequence

from megatron_ponder.tokenizer.base import NO_PAD_ID, TextTokenizer, TokenizerError

SENTENCEPIECE_TOKENIZERS = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                            "Llama2Tokenizer")
TIKTOKENIZER = "TikTokenizer"
TIKTOKEN_PATTERNS = ("v1", "v2")
_NULL_TOKENIZER = "NullTokenizer"
_MODEL_FILE_KIND = {TIKTOKENIZER: "a tiktoken JSON vocabulary"}
_MODEL_FILE_KIND.update({name: "a SentencePiece .model file" for name in SENTENCEPIECE_TOKENIZERS})
_PACKAGE_NEEDED = {TIKTOKENIZER: "tiktoken", "HuggingFaceTokenizer": "transformers"}
_PACKAGE_NEEDED.update({name: "sentencepiece" for name in SENTENCEPIECE_TOKENIZERS})


def check_megatron_core_flags(spec) -> None:
    """TokenizerError (one line) when ``spec``'s flags cannot build its megatron-core type."""
    kind = spec.tokenizer_type
    if kind == _NULL_TOKENIZER:
        if spec.vocab_size is None or spec.vocab_size <= 0:
            raise TokenizerError("NullTokenizer needs --vocab-size N (N > 0)")
        return
    if kind in _MODEL_FILE_KIND:
        if spec.tokenizer_model is None:
            raise TokenizerError(f"{kind} needs --tokenizer-model ({_MODEL_FILE_KIND[kind]})")
        if not os.path.isfile(spec.tokenizer_model):
            raise TokenizerError(f"{kind}: --tokenizer-model {spec.tokenizer_model} not found")
    if kind == TIKTOKENIZER:
        if spec.tiktoken_pattern is not None and spec.tiktoken_pattern not in TIKTOKEN_PATTERNS:
            raise TokenizerError(f"--tiktoken-pattern must be one of {list(TIKTOKEN_PATTERNS)}, "
                                 f"got {spec.tiktoken_pattern!r}")
        special = spec.tiktoken_num_special_tokens
        if spec.vocab_size is not None and spec.vocab_size <= special:
            raise TokenizerError(f"TikTokenizer: --vocab-size ({spec.vocab_size}) counts the "
                                 f"--tiktoken-num-special-tokens ({special}) and must exceed it")
        if len(spec.tiktoken_special_tokens) > special:
            raise TokenizerError(
                f"TikTokenizer: {len(spec.tiktoken_special_tokens)} --tiktoken-special-tokens "
                f"do not fit in --tiktoken-num-special-tokens {special}")


def build_megatron_core_tokenizer(spec) -> "MegatronCoreTokenizer":
    """megatron-core's tokenizer for ``spec`` (its flags already checked), adapted."""
    package = _PACKAGE_NEEDED.get(spec.tokenizer_type)
    if package is not None and importlib.util.find_spec(package) is None:
        raise TokenizerError(f"{spec.tokenizer_type} needs the {package} package: "
                             f"pip install {package}")
    from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer

    try:
        tokenizer = build_tokenizer(_megatron_lm_arguments(spec))
    except Exception as error:  # megatron-core reports bad files as asserts and bare exceptions
        raise TokenizerError(_load_failure(spec, error)) from error
    return MegatronCoreTokenizer(tokenizer, spec.tokenizer_type, _name(spec))


def _megatron_lm_arguments(spec) -> SimpleNamespace:
    """The argument namespace megatron-core's build_tokenizer reads (Megatron-LM's flags)."""
    special_tokens = list(spec.tokenizer_special_tokens) or None
    if spec.tokenizer_type == TIKTOKENIZER and spec.tiktoken_special_tokens:
        special_tokens = list(spec.tiktoken_special_tokens)
    return SimpleNamespace(
        tokenizer_type=spec.tokenizer_type, tokenizer_model=spec.tokenizer_model,
        vocab_file=spec.vocab_file, merge_file=spec.merge_file, vocab_size=spec.vocab_size,
        tiktoken_pattern=spec.tiktoken_pattern,
        tiktoken_num_special_tokens=spec.tiktoken_num_special_tokens,
        tokenizer_special_tokens=special_tokens, tokenizer_metadata=None,
        tokenizer_sentencepiece_legacy=spec.tokenizer_sentencepiece_legacy,
        tokenizer_hf_use_fast=spec.tokenizer_hf_use_fast,
        tokenizer_hf_include_special_tokens=spec.tokenizer_hf_include_special_tokens,
        trust_remote_code=spec.trust_remote_code)


def _load_failure(spec, error: Exception) -> str:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    model = spec.tokenizer_model
    if spec.tokenizer_type == "HuggingFaceTokenizer":
        return (f"tokenizer model {model!r} is not a local file or directory, and "
                f"megatron-core's HuggingFaceTokenizer cannot load it: {detail}")
    if spec.tokenizer_type == TIKTOKENIZER and not detail:
        detail = ("not a tiktoken JSON vocabulary (a list of {rank, token_bytes, token_str}, the "
                  "256 single bytes first) with at least --vocab-size minus "
                  "--tiktoken-num-special-tokens entries")
    return f"cannot load {spec.tokenizer_type} from {model}: {detail or type(error).__name__}"


def _name(spec) -> str:
    """Path-independent: the file or directory name, or the hub name."""
    if spec.tokenizer_type == _NULL_TOKENIZER:
        return f"null-{spec.vocab_size}"
    model = spec.tokenizer_model
    return os.path.basename(os.path.normpath(model)) if os.path.exists(model) else model


class MegatronCoreTokenizer(TextTokenizer):
    """A megatron-core text tokenizer with this package's interface; ``core`` is the original."""

    def __init__(self, core, tokenizer_type: str, name: str) -> None:
        self.core = core
        self.tokenizer_type = tokenizer_type
        self.name = name
        try:
            eod = core.eod
        except (AttributeError, NameError):
            eod = None
        if eod is None or eod < 0:
            raise TokenizerError(f"{tokenizer_type} {name!r} has no end-of-document token "
                                 "(an EOS token); Megatron's datasets need one")
        self._eod = int(eod)

    @property
    def vocab_size(self) -> int:
        return int(self.core.vocab_size)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        try:
            pad = self.core.pad
        except (AttributeError, NameError):  # megatron-core's NullTokenizer has none
            return NO_PAD_ID
        # A pad equal to EOD would mask every document end out of the loss.
        if pad is None or pad < 0 or pad == self._eod:
            return NO_PAD_ID
        return int(pad)

    def tokenize(self, text: str) -> List[int]:
        return list(self.core.tokenize(text))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.core.detokenize([int(token_id) for token_id in ids])

    def save_hugging_face_files(self, folder: str) -> bool:
        """megatron-core's HuggingFaceTokenizer: write its transformers tokenizer's files
        (tokenizer.json where it is a fast one, tokenizer_config.json, ...) into ``folder`` and
        return True; the other types have no such files (False)."""
        if self.tokenizer_type != "HuggingFaceTokenizer":
            return False
        os.makedirs(folder, exist_ok=True)
        self.core.save_pretrained(folder)
        return True

    def transformers_tokenizer(self):
        """megatron-core's HuggingFaceTokenizer: its transformers tokenizer, reloaded from the
        files it writes; the other types have none (TokenizerError)."""
        import tempfile

        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as folder:
            if self.save_hugging_face_files(folder):
                return AutoTokenizer.from_pretrained(folder)
        return super().transformers_tokenizer()

    @property
    def unique_identifiers(self):
        identifiers = super().unique_identifiers
        identifiers["tokenizer_type"] = self.tokenizer_type
        return identifiers
