"""Turn raw records into token-id arrays, or say precisely why a record is skipped or invalid.

This module runs inside worker processes. It imports only the tokenizer package, which loads
megatron-core (and torch) only for megatron-core's tokenizer types, so a worker with another
tokenizer starts fast under any multiprocessing start method.
"""

import json
import re
import signal
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy

from megatron_ponder.data.preprocess.inputs import JSONL, RawRecord
from megatron_ponder.data.preprocess.sentences import split_sentences
from megatron_ponder.tokenizer import TokenizerSpec, build_tokenizer

# Reasons a record is not written. The first two are normal (counted); the others mean the input
# is broken: an error, unless --skip-invalid.
BLANK_LINE = "blank line"
EMPTY_DOCUMENT = "empty document"
INVALID_UTF8 = "invalid UTF-8"
MALFORMED_JSON = "malformed JSON"
NOT_AN_OBJECT = "not a JSON object"
MISSING_KEY = "missing key"
NOT_A_STRING = "non-string value"
UNPAIRED_SURROGATE = "unpaired surrogate"
NORMAL_SKIP_REASONS = (BLANK_LINE, EMPTY_DOCUMENT)

_JSON_TYPE_NAMES = {dict: "an object", list: "an array", int: "a number", float: "a number",
                    bool: "a boolean", type(None): "null"}
_SURROGATE = re.compile("[\ud800-\udfff]")


class RecordProblem(NamedTuple):
    """Why the record starting at ``line`` produced no document."""

    line: int
    reason: str
    detail: str

    @property
    def is_invalid(self) -> bool:
        return self.reason not in NORMAL_SKIP_REASONS


class SplitDocument(NamedTuple):
    """A document tokenized sentence by sentence (``--split-sentences``): all its ids, and the
    length of each sentence's ids (stored as the document's sequences)."""

    ids: numpy.ndarray
    sentence_lengths: Tuple[int, ...]


# One token array (or, with split_sentences, one SplitDocument) per output key, in key order.
EncodedDocument = Tuple[Union[numpy.ndarray, SplitDocument], ...]
RecordOutcome = Union[EncodedDocument, RecordProblem]


@dataclass(frozen=True)
class EncoderSettings:
    """Everything a worker needs to encode records; picklable for any start method."""

    tokenizer: TokenizerSpec
    input_format: str
    keys: Tuple[str, ...]
    append_eod: bool
    token_dtype: str
    split_sentences: bool = False
    keep_newlines: bool = False


class DocumentEncoder:
    """Encodes records of one input format with one tokenizer."""

    def __init__(self, settings: EncoderSettings) -> None:
        self._settings = settings
        self._tokenizer = build_tokenizer(settings.tokenizer)
        self._dtype = numpy.dtype(settings.token_dtype)

    def encode_batch(self, records: Sequence[RawRecord]) -> List[RecordOutcome]:
        if self._settings.input_format == JSONL:
            return [self._encode_json_line(line, raw) for line, raw in records]
        return [self._encode_text(line, raw) for line, raw in records]

    def _encode_json_line(self, line: int, raw: bytes) -> RecordOutcome:
        if not raw.strip():
            return RecordProblem(line, BLANK_LINE, "blank line")
        text = _decode_utf8(raw, line)
        if isinstance(text, RecordProblem):
            return text
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            # The record is one line, so the offset is the column; an error found past the
            # line break (input ended too early) is placed at the end of the line.
            line_length = len(text) - (2 if text.endswith("\r\n") else text.endswith("\n"))
            column = min(error.pos, line_length) + 1
            # json's messages end in " at" ("Unterminated string starting at"); add the place.
            message = error.msg[:-3] if error.msg.endswith(" at") else error.msg
            return RecordProblem(
                line, MALFORMED_JSON, f"malformed JSON: {message} at column {column}"
            )
        if not isinstance(record, dict):
            return RecordProblem(
                line, NOT_AN_OBJECT,
                f"expected a JSON object, found {_JSON_TYPE_NAMES.get(type(record), 'a value')}",
            )
        values = []
        for key in self._settings.keys:
            if key not in record:
                present = ", ".join(repr(name) for name in list(record)[:8]) or "none"
                return RecordProblem(
                    line, MISSING_KEY, f"missing key {key!r} (keys present: {present})"
                )
            value = record[key]
            if not isinstance(value, str):
                kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
                return RecordProblem(
                    line, NOT_A_STRING, f"key {key!r} holds {kind}, expected a string"
                )
            # Only a \u escape can put a lone surrogate into a decoded JSON string; such text
            # cannot be encoded as UTF-8 and tokenizers reject or silently replace it.
            if b"\\u" in raw and _SURROGATE.search(value):
                return RecordProblem(
                    line, UNPAIRED_SURROGATE,
                    f"key {key!r} holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)",
                )
            values.append(value)
        return self._tokenize_all(line, values)

    def _encode_text(self, first_line: int, raw: bytes) -> RecordOutcome:
        text = _decode_utf8(raw, first_line)
        if isinstance(text, RecordProblem):
            return text
        return self._tokenize_all(first_line, [text])

    def _tokenize_all(self, line: int, texts: List[str]) -> RecordOutcome:
        arrays = []
        for text in texts:
            if self._settings.split_sentences:
                document = self._tokenize_sentences(text)
                if document is None:
                    return RecordProblem(line, EMPTY_DOCUMENT, "empty document")
                arrays.append(document)
                continue
            ids = self._tokenizer.tokenize(text)
            # Empty in any key skips the whole record, so the outputs of several keys stay
            # aligned document by document.
            if not ids:
                return RecordProblem(line, EMPTY_DOCUMENT, "empty document")
            if self._settings.append_eod:
                ids.append(self._tokenizer.eod)
            arrays.append(numpy.array(ids, dtype=self._dtype))
        return tuple(arrays)

    def _tokenize_sentences(self, text: str) -> Optional[SplitDocument]:
        """Each sentence tokenized on its own (sentences without tokens dropped), EOD after the
        last one, as Megatron-LM does; None when nothing is left."""
        sentences = [ids for ids in (self._tokenizer.tokenize(sentence) for sentence in
                                     split_sentences(text, self._settings.keep_newlines))
                     if ids]
        if not sentences:
            return None
        if self._settings.append_eod:
            sentences[-1].append(self._tokenizer.eod)
        ids = numpy.fromiter((token for sentence in sentences for token in sentence),
                             dtype=self._dtype)
        return SplitDocument(ids, tuple(len(sentence) for sentence in sentences))


def _decode_utf8(raw: bytes, first_line: int) -> Union[str, RecordProblem]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        line = first_line + raw.count(b"\n", 0, error.start)
        return RecordProblem(
            line, INVALID_UTF8,
            f"invalid UTF-8: byte 0x{raw[error.start]:02x} at byte {error.start - line_start + 1} "
            "of the line",
        )


# --- worker-process entry points -------------------------------------------------------------

_worker_encoder: Optional[DocumentEncoder] = None


def initialize_worker(settings: EncoderSettings) -> None:
    """Pool initializer: build this worker's tokenizer and leave signals to the parent."""
    global _worker_encoder
    # Ctrl-C reaches every process of the terminal's process group; only the parent reacts (it
    # cleans up and terminates the pool), so workers print no tracebacks. A forked worker would
    # also inherit the parent's SIGTERM handler, which must not run here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_encoder = DocumentEncoder(settings)


def encode_batch_in_worker(records: Sequence[RawRecord]) -> List[RecordOutcome]:
    return _worker_encoder.encode_batch(records)
