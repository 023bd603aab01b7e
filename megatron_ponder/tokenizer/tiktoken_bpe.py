"""GPT-2 BPE through tiktoken (Megatron-LM's ``GPT2BPETokenizer``).

The ranks file is GPT-2's ``r50k_base``. With no network it comes from the openai-whisper sdist,
which ships ``whisper/assets/gpt2.tiktoken`` byte for byte
(``pip install --no-deps openai-whisper==20250625``); any ``.tiktoken`` path also works.
"""

import base64
import importlib.util
import os
from typing import Dict, List, Optional, Sequence

from megatron_ponder.tokenizer.base import TextTokenizer, TokenizerError

_ENDOFTEXT = "<|endoftext|>"
_WHISPER_INSTALL = "pip install --no-deps openai-whisper==20250625"


def whisper_gpt2_tiktoken_path() -> str:
    """Path of ``gpt2.tiktoken`` inside an installed openai-whisper (found without importing it)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        raise TokenizerError(
            "GPT2BPETokenizer needs GPT-2's BPE ranks: install them with "
            f"`{_WHISPER_INSTALL}`, or pass --tokenizer-model PATH.tiktoken, or "
            "--vocab-file/--merge-file"
        )
    path = os.path.join(os.path.dirname(spec.origin), "assets", "gpt2.tiktoken")
    if not os.path.isfile(path):
        raise TokenizerError(f"{path} is missing; reinstall with `{_WHISPER_INSTALL}`")
    return path


def read_tiktoken_ranks(path: str) -> Dict[bytes, int]:
    """Parse a ``.tiktoken`` file: one ``base64(token bytes) rank`` pair per line."""
    # Read here rather than with tiktoken.load, which copies even local files into a /tmp cache.
    ranks = {}
    try:
        handle = open(path, "rb")
    except FileNotFoundError as error:
        raise TokenizerError(f"tiktoken BPE file not found: {path}") from error
    with handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as error:  # includes binascii.Error
                raise TokenizerError(
                    f"{path}:{line_number}: not a tiktoken BPE file ({error})"
                ) from error
    return ranks


class TiktokenTokenizer(TextTokenizer):
    """Byte-level GPT-2 BPE; ``<|endoftext|>`` (the id after the last rank, 50256) is EOD.

    Text is encoded with ``encode_ordinary``: a literal ``<|endoftext|>`` in a document is plain
    text, as in GPT-2's and Megatron-LM's original encoder.
    """

    def __init__(self, bpe_file: Optional[str] = None, name: str = "gpt2") -> None:
        import tiktoken
        from tiktoken_ext.openai_public import r50k_pat_str

        path = bpe_file or whisper_gpt2_tiktoken_path()
        ranks = read_tiktoken_ranks(path)
        self.name = name
        self._eod = len(ranks)
        self._encoding = tiktoken.Encoding(
            name=name,
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={_ENDOFTEXT: self._eod},
        )

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eod(self) -> int:
        return self._eod

    def tokenize(self, text: str) -> List[int]:
        return self._encoding.encode_ordinary(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))
