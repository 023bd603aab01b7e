"""Finding input files and streaming them as raw records."""

import os

import pytest

from megatron_ponder.data.preprocess.inputs import (
    JSONL,
    TEXT,
    TEXT_DOCUMENT_PER_BLOCK,
    TEXT_DOCUMENT_PER_FILE,
    InputError,
    expand_inputs,
    iter_record_batches,
    total_input_bytes,
)


def _records(paths, input_format, text_document=TEXT_DOCUMENT_PER_FILE, **limits):
    return [(batch.source, record) for batch in
            iter_record_batches(paths, input_format, text_document, **limits)
            for record in batch.records]


def test_expand_inputs_keeps_order_expands_globs_and_drops_repeats(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    b, a, c = (str(tmp_path / name) for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl"))
    assert expand_inputs([b, str(tmp_path / "*.jsonl")]) == [b, a]
    assert expand_inputs([str(tmp_path / "**" / "*.jsonl")]) == [a, b, c]


@pytest.mark.parametrize("make, message", [
    (lambda root: str(root / "absent.jsonl"), "not found"),
    (lambda root: str(root / "*.nothing"), "matches no files"),
    (lambda root: str(root), "is a directory"),
])
def test_expand_inputs_rejects_unusable_paths(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        expand_inputs([make(tmp_path)])


def test_jsonl_records_are_raw_lines_with_line_numbers(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n\n{"text": "b\xe2\x80\xa8c"}\r\n{"text": "d"}')
    assert _records([str(path)], JSONL) == [
        (str(path), (1, b'{"text": "a"}\n')),          # the UTF-8 BOM is dropped
        (str(path), (2, b"\n")),
        # U+2028 inside a string is not a line break in JSON Lines
        (str(path), (3, b'{"text": "b\xe2\x80\xa8c"}\r\n')),
        (str(path), (4, b'{"text": "d"}')),
    ]


def test_text_blocks_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\n\nfirst line\nsecond line\n  \t\nthird\r\n\n\n\nlast")
    assert [record for _, record in _records([str(path)], TEXT, TEXT_DOCUMENT_PER_BLOCK)] == [
        (3, b"first line\nsecond line"), (6, b"third"), (10, b"last")]


def test_text_file_is_one_record_kept_verbatim(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"para one\n\npara two\n")
    assert _records([str(path)], TEXT) == [(str(path), (1, b"para one\n\npara two\n"))]


def test_batches_respect_record_and_byte_limits(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(b'{"text": "%d"}\n' % index for index in range(10))
                     + b'{"text": "' + b"x" * 5000 + b'"}\n')
    batches = list(iter_record_batches([str(path)], JSONL, max_records=4, max_bytes=1000))
    assert [len(batch.records) for batch in batches] == [4, 4, 3]
    assert sum(batch.num_bytes for batch in batches) == os.path.getsize(path)


def test_total_input_bytes_is_unknown_for_pipes(tmp_path):
    regular = tmp_path / "a.jsonl"
    regular.write_text("{}\n")
    assert total_input_bytes([str(regular)]) == 3
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert total_input_bytes([str(regular), str(fifo)]) is None
