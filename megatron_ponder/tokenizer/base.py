"""The tokenizer interface shared by the preprocessing tool, megatron-core's datasets and training.

megatron-core's ``GPTDataset`` / ``MockGPTDataset`` read ``eod``, ``pad``, ``vocab_size`` and
``unique_identifiers`` (the last one goes into the hash that names the cached sample indices), so
every tokenizer here provides exactly those, with Megatron-LM's meaning.
"""

import abc
import math
from collections import OrderedDict
from typing import List, Sequence

# megatron-core's datasets treat -1 as "no pad token": it never occurs in token data, so nothing
# real is masked out of the loss.
NO_PAD_ID = -1


class TokenizerError(Exception):
    """A tokenizer could not be found or loaded; the message says what to install or pass."""


def padded_vocab_size(
    vocab_size: int, tensor_model_parallel_size: int = 1, make_vocab_size_divisible_by: int = 128
) -> int:
    """Megatron's embedding size: ``vocab_size`` rounded up to a multiple of 128 x TP size.

    Every tensor-parallel rank then holds an equal, 128-aligned slice of the vocabulary
    (50277 -> 50304 for GPT-NeoX-20B at TP 1, as in Pythia).
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if tensor_model_parallel_size <= 0 or make_vocab_size_divisible_by <= 0:
        raise ValueError(
            "tensor_model_parallel_size and make_vocab_size_divisible_by must be positive, got "
            f"{tensor_model_parallel_size} and {make_vocab_size_divisible_by}"
        )
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return math.ceil(vocab_size / multiple) * multiple


class TextTokenizer(abc.ABC):
    """Text <-> token ids, with the special ids megatron-core's GPT datasets need.

    Attributes:
        name: a short, path-independent name (for example ``"EleutherAI/gpt-neox-20b"``); it is
            part of the dataset cache key, so moving files does not invalidate caches.
    """

    name: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (largest id + 1), before Megatron's padding."""

    @property
    @abc.abstractmethod
    def eod(self) -> int:
        """The end-of-document id that ``--append-eod`` appends and GPTDataset masks on."""

    @property
    def pad(self) -> int:
        """The padding id, or ``NO_PAD_ID`` (-1) when the vocabulary has none."""
        return NO_PAD_ID

    @abc.abstractmethod
    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text``, without any added BOS/EOS (documents get EOD from the tool)."""

    @abc.abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""

    def transformers_tokenizer(self):
        """The same tokenizer as a ``transformers.PreTrainedTokenizerBase`` (for lm-eval's
        ``hf`` backend and ``AutoTokenizer`` users). TokenizerError for a type that has
        none."""
        raise TokenizerError(
            f"{type(self).__name__} {self.name!r} has no transformers equivalent; give a "
            "tokenizer.json (tools' --tokenizer) to evaluate with lm-eval"
        )

    def padded_vocab_size(
        self, tensor_model_parallel_size: int = 1, make_vocab_size_divisible_by: int = 128
    ) -> int:
        """The embedding size to build for this tokenizer (see ``padded_vocab_size``)."""
        return padded_vocab_size(
            self.vocab_size, tensor_model_parallel_size, make_vocab_size_divisible_by
        )

    @property
    def unique_identifiers(self) -> "OrderedDict[str, object]":
        """What megatron-core hashes into its dataset cache names (JSON-serialisable)."""
        return OrderedDict(
            [
                ("class", type(self).__name__),
                ("name", self.name),
                ("vocab_size", self.vocab_size),
                ("eod", self.eod),
                ("pad", self.pad),
            ]
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"eod={self.eod}, pad={self.pad})"
        )
