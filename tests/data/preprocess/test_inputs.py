"""Finding input files and streaming them as raw records."""

import gzip
import os

import pytest
import zstandard

from megatron_ponder.data.preprocess.inputs import (
    JSONL,
    TEXT,
    TEXT_DOCUMENT_PER_BLOCK,
    TEXT_DOCUMENT_PER_FILE,
    InputError,
    Segment,
    expand_inputs,
    iter_record_batches,
    plan_segments,
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
    (lambda root: str(root), "holds no"),
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


def test_a_directory_gives_its_jsonl_files_recursively_in_order(tmp_path):
    for name in ("b.jsonl.zst", "a.jsonl", "sub/c.jsonl.gz", "README.md", ".hidden.jsonl",
                 "sub/d.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    expected = [str(tmp_path / name) for name in
                ("a.jsonl", "b.jsonl.zst", "sub/c.jsonl.gz", "sub/d.json")]
    assert expand_inputs([str(tmp_path)]) == expected
    # text input takes every visible file
    assert str(tmp_path / "README.md") in expand_inputs([str(tmp_path)], TEXT)


def _compressed_copies(tmp_path, data):
    (tmp_path / "in.jsonl").write_bytes(data)
    with gzip.open(tmp_path / "in.jsonl.gz", "wb") as handle:
        handle.write(data)
    compressor = zstandard.ZstdCompressor()
    half = len(data) // 2  # two frames, as concatenated shards are
    (tmp_path / "in.jsonl.zst").write_bytes(compressor.compress(data[:half])
                                            + compressor.compress(data[half:]))
    return [str(tmp_path / name) for name in ("in.jsonl", "in.jsonl.gz", "in.jsonl.zst")]


def test_gzip_and_zstd_inputs_give_the_plain_records(tmp_path):
    data = b"".join(b'{"text": "document %d"}\n' % index for index in range(5000))
    plain, gz, zst = _compressed_copies(tmp_path, data)
    expected = [record for _, record in _records([plain], JSONL)]
    assert len(expected) == 5000
    for path in (gz, zst):
        assert [record for _, record in _records([path], JSONL)] == expected
    assert total_input_bytes([plain, zst]) is None  # text size unknown before reading


@pytest.mark.parametrize("damage, message", [
    (lambda blob: blob[:len(blob) // 2], "truncated"),
    (lambda blob: b"not compressed at all", "corrupt zstd data"),
])
def test_damaged_zstd_input_is_reported(tmp_path, damage, message):
    data = b"".join(b'{"text": "document %d"}\n' % index for index in range(5000))
    _, _, zst = _compressed_copies(tmp_path, data)
    with open(zst, "rb") as handle:
        blob = handle.read()
    with open(zst, "wb") as handle:
        handle.write(damage(blob))
    with pytest.raises(InputError, match=f"{zst}: .*{message}"):
        _records([zst], JSONL)


def test_truncated_gzip_input_is_reported(tmp_path):
    data = b"".join(b'{"text": "document %d"}\n' % index for index in range(5000))
    _, gz, _ = _compressed_copies(tmp_path, data)
    with open(gz, "rb") as handle:
        blob = handle.read()
    with open(gz, "wb") as handle:
        handle.write(blob[:len(blob) // 2])
    with pytest.raises(InputError, match=f"{gz}: .*truncated"):
        _records([gz], JSONL)


def test_segments_cut_plain_files_at_line_starts_and_cover_them_exactly(tmp_path):
    lines = [b'{"text": "%s"}\n' % (b"x" * (index % 37)) for index in range(400)]
    plain, _, zst = _compressed_copies(tmp_path, b"".join(lines))
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"".join(lines[:50]))
    paths = [plain, zst, str(other)]
    whole = _records(paths, JSONL)
    for partitions in (1, 2, 3, 5, 8):
        plan = plan_segments(paths, partitions, splittable=True)
        assert 1 <= len(plan) <= partitions
        segments = [segment for group in plan for segment in group]
        assert all(segment.path == zst and segment.start == 0 for segment in segments
                   if segment.path == zst)  # compressed files stay whole
        pieces = [(batch.source, (batch.location(line), raw))
                  for batch in iter_record_batches(segments, JSONL) for line, raw in batch.records]
        # Same records, in the same order, each at its line number in its file.
        assert [raw for _, (_, raw) in pieces] == [raw for _, (_, raw) in whole]
        assert [location for _, (location, _) in pieces] == [
            f"{source}:{line}" for source, (line, _) in whole]
    assert len(plan_segments([plain], 4, splittable=True)) == 4
    assert plan_segments([plain], 4, splittable=False) == [[Segment(plain)]]
