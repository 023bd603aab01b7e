"""Record classification: every document is tokenized exactly, every problem named precisely."""

import numpy
import pytest

from megatron_ponder.data.preprocess.encoder import (
    BLANK_LINE,
    EMPTY_DOCUMENT,
    INVALID_UTF8,
    MALFORMED_JSON,
    MISSING_KEY,
    NOT_A_STRING,
    NOT_AN_OBJECT,
    UNPAIRED_SURROGATE,
    DocumentEncoder,
    EncoderSettings,
    RecordProblem,
)
from megatron_ponder.data.preprocess.inputs import JSONL, TEXT
from megatron_ponder.tokenizer import TokenizerSpec, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _encoder(input_format=JSONL, keys=("text",), append_eod=False):
    return DocumentEncoder(EncoderSettings(TokenizerSpec(), input_format, tuple(keys),
                                           append_eod, "uint16"))


def test_json_documents_tokenize_exactly(tokenizer):
    texts = ["Hello world", "two\nlines — ü", " " * 3]
    raw = [b'{"text": %s, "other": 1}\n' % __import__("json").dumps(t).encode() for t in texts]
    outcomes = _encoder(append_eod=True).encode_batch(list(enumerate(raw, start=1)))
    for text, outcome in zip(texts, outcomes):
        (ids,) = outcome
        assert ids.dtype == numpy.uint16
        assert ids.tolist() == tokenizer.tokenize(text) + [tokenizer.eod]


def test_several_keys_give_one_array_each(tokenizer):
    (outcome,) = _encoder(keys=("text", "title")).encode_batch(
        [(1, b'{"title": "T", "text": "body"}')])
    assert [ids.tolist() for ids in outcome] == [tokenizer.tokenize("body"),
                                                  tokenizer.tokenize("T")]


@pytest.mark.parametrize("raw, reason, detail", [
    (b"   \n", BLANK_LINE, "blank line"),
    (b'{"text": ""}\n', EMPTY_DOCUMENT, "empty document"),
    (b'{"text": "ok", \n', MALFORMED_JSON,
     "malformed JSON: Expecting property name enclosed in double quotes at column 16"),
    (b'{"text": "unterminated}', MALFORMED_JSON,
     "malformed JSON: Unterminated string starting at column 10"),
    (b'{"text": "tab\tinside"}\n', MALFORMED_JSON, "Invalid control character at column 14"),
    (b'["text"]\n', NOT_AN_OBJECT, "expected a JSON object, found an array"),
    (b'"just a string"\n', NOT_AN_OBJECT, "found a value"),
    (b'{"body": "x", "id": 3}\n', MISSING_KEY, "missing key 'text' (keys present: 'body', 'id')"),
    (b'{"text": 42}\n', NOT_A_STRING, "key 'text' holds a number, expected a string"),
    (b'{"text": null}\n', NOT_A_STRING, "holds null"),
    (b'{"text": ["a"]}\n', NOT_A_STRING, "holds an array"),
    (b'{"text": true}\n', NOT_A_STRING, "holds a boolean"),
    (b'{"text": "caf\xe9"}\n', INVALID_UTF8, "invalid UTF-8: byte 0xe9 at byte 14 of the line"),
    (b'{"text": "a\\ud800b"}\n', UNPAIRED_SURROGATE, "unpaired UTF-16 surrogate"),
])
def test_json_problems_are_classified(raw, reason, detail):
    (outcome,) = _encoder().encode_batch([(7, raw)])
    assert isinstance(outcome, RecordProblem)
    assert (outcome.line, outcome.reason) == (7, reason)
    assert detail in outcome.detail
    assert outcome.is_invalid == (reason not in (BLANK_LINE, EMPTY_DOCUMENT))


def test_an_empty_key_skips_the_whole_record_to_keep_outputs_aligned():
    (outcome,) = _encoder(keys=("text", "title")).encode_batch(
        [(1, b'{"title": "", "text": "body"}')])
    assert outcome.reason == EMPTY_DOCUMENT


def test_surrogate_pairs_are_fine(tokenizer):
    (outcome,) = _encoder().encode_batch([(1, b'{"text": "rocket \\ud83d\\ude80"}')])
    assert outcome[0].tolist() == tokenizer.tokenize("rocket \U0001F680")


def test_invalid_utf8_in_text_names_the_line_inside_the_document():
    (outcome,) = _encoder(TEXT).encode_batch([(10, b"fine\nstill fine\nbad \xff here\n")])
    assert (outcome.line, outcome.reason) == (12, INVALID_UTF8)
    assert "byte 0xff at byte 5 of the line" in outcome.detail


def test_text_documents_tokenize_exactly(tokenizer):
    text = "First paragraph.\n\nSecond one, with ünïcode.\n"
    (outcome,) = _encoder(TEXT, append_eod=True).encode_batch([(1, text.encode())])
    assert outcome[0].tolist() == tokenizer.tokenize(text) + [0]


def _sentence_encoder(keep_newlines=False, append_eod=True):
    return DocumentEncoder(EncoderSettings(TokenizerSpec(), JSONL, ("text",), append_eod,
                                           "uint16", split_sentences=True,
                                           keep_newlines=keep_newlines))


def test_split_sentences_tokenizes_each_sentence_with_eod_after_the_last(tokenizer):
    from megatron_ponder.data.preprocess.encoder import SplitDocument

    (outcome,) = _sentence_encoder().encode_batch(
        [(1, b'{"text": "First one. Second one!\\n\\nThird."}')])
    (document,) = outcome
    assert isinstance(document, SplitDocument)
    sentences = [tokenizer.tokenize(s) for s in ("First one.", "Second one!", "Third.")]
    sentences[-1].append(tokenizer.eod)
    assert document.sentence_lengths == tuple(map(len, sentences))
    assert document.ids.tolist() == sum(sentences, [])
    (outcome,) = _sentence_encoder(keep_newlines=True, append_eod=False).encode_batch(
        [(1, b'{"text": "First one. Second one!\\n\\nThird."}')])
    assert outcome[0].ids.tolist() == sum((tokenizer.tokenize(s) for s in
                                           ("First one.", "Second one!\n\n", "Third.")), [])


def test_split_sentences_of_a_blank_document_is_empty():
    (outcome,) = _sentence_encoder().encode_batch([(3, b'{"text": " \\n\\n "}')])
    assert (outcome.line, outcome.reason) == (3, EMPTY_DOCUMENT)
