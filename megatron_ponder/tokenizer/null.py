"""Megatron-LM's ``NullTokenizer``: no vocabulary, for mock data and benchmarks."""

from typing import List, Sequence

from megatron_ponder.tokenizer.base import TextTokenizer


class NullTokenizer(TextTokenizer):
    """Ids are written as text (``"5 17 3"``); EOD is the extra id ``vocab_size_without_eod``.

    As in Megatron-LM, ``NullTokenizer(V).vocab_size`` is ``V + 1``: ids ``0..V-1`` plus EOD.
    """

    def __init__(self, vocab_size_without_eod: int) -> None:
        if vocab_size_without_eod <= 0:
            raise ValueError(f"vocab size must be positive, got {vocab_size_without_eod}")
        self._vocab_size_without_eod = int(vocab_size_without_eod)
        self.name = f"null-{self._vocab_size_without_eod}"

    @property
    def vocab_size(self) -> int:
        return self._vocab_size_without_eod + 1

    @property
    def eod(self) -> int:
        return self._vocab_size_without_eod

    def tokenize(self, text: str) -> List[int]:
        return [int(word) for word in text.split()]

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(token_id)) for token_id in ids)
