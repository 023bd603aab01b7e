"""Find the input files and stream them as batches of raw records, never reading a file whole.

Records stay raw bytes here: decoding, JSON parsing and tokenizing happen in the worker
processes, so the reading process does little more than split lines.
"""

import glob
import os
import stat
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

JSONL = "jsonl"
TEXT = "text"
INPUT_FORMATS = (JSONL, TEXT)

# --text-document: what one document is in --input-format text.
TEXT_DOCUMENT_PER_FILE = "file"
TEXT_DOCUMENT_PER_BLOCK = "block"
TEXT_DOCUMENT_UNITS = (TEXT_DOCUMENT_PER_FILE, TEXT_DOCUMENT_PER_BLOCK)

_UTF8_BOM = b"\xef\xbb\xbf"

# (line number where the record starts, 1-based; the record's raw bytes)
RawRecord = Tuple[int, bytes]


class InputError(Exception):
    """An input path or file that cannot be used; the message is meant for the user."""


@dataclass
class RecordBatch:
    """Consecutive records of one file, the unit of work sent to a worker process."""

    source: str
    records: List[RawRecord]
    num_bytes: int


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """The files named by ``--input``: paths and globs (``**`` recurses), in order, no repeats."""
    paths: List[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [path for path in sorted(glob.glob(pattern, recursive=True))
                       if not os.path.isdir(path)]
            if not matches:
                raise InputError(f"--input {pattern!r} matches no files")
            paths.extend(matches)
        elif not os.path.exists(pattern):
            raise InputError(f"input file not found: {pattern}")
        elif os.path.isdir(pattern):
            raise InputError(
                f"input {pattern} is a directory; pass its files or a glob such as "
                f"'{os.path.join(pattern, '*.jsonl')}'"
            )
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


def total_input_bytes(paths: Sequence[str]) -> Optional[int]:
    """Combined size for the progress bar, or None when a pipe or device makes it unknown."""
    total = 0
    for path in paths:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            return None
        total += status.st_size
    return total


def iter_record_batches(
    paths: Sequence[str],
    input_format: str,
    text_document: str = TEXT_DOCUMENT_PER_FILE,
    max_records: int = 1024,
    max_bytes: int = 1 << 20,
) -> Iterator[RecordBatch]:
    """Batches of at most ``max_records`` records or about ``max_bytes`` bytes, file by file."""
    for path in paths:
        batch = RecordBatch(path, [], 0)
        for record in _iter_file_records(path, input_format, text_document):
            batch.records.append(record)
            batch.num_bytes += len(record[1])
            if len(batch.records) >= max_records or batch.num_bytes >= max_bytes:
                yield batch
                batch = RecordBatch(path, [], 0)
        if batch.records:
            yield batch


def _iter_file_records(path: str, input_format: str, text_document: str) -> Iterator[RawRecord]:
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise InputError(f"cannot open input {path}: {error.strerror}") from error
    with handle:
        if input_format == JSONL:
            yield from _jsonl_records(handle)
        elif text_document == TEXT_DOCUMENT_PER_FILE:
            # The whole file is one document, so it is one record: it must be in memory to be
            # tokenized anyway.
            content = handle.read()
            yield 1, content[len(_UTF8_BOM):] if content.startswith(_UTF8_BOM) else content
        else:
            yield from _blank_line_blocks(handle)


def _jsonl_records(handle) -> Iterator[RawRecord]:
    # Binary lines split on b"\n" only, as JSON Lines requires; str.splitlines would also split
    # inside strings at U+2028 and other Unicode line breaks.
    for line_number, line in enumerate(handle, start=1):
        if line_number == 1 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM):]
        yield line_number, line


def _blank_line_blocks(handle) -> Iterator[RawRecord]:
    """Blocks of consecutive non-blank lines; the line break that ends a block is dropped."""
    block: List[bytes] = []
    first_line = 0
    for line_number, line in enumerate(handle, start=1):
        if line_number == 1 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM):]
        if line.strip():
            if not block:
                first_line = line_number
            block.append(line)
        elif block:
            yield first_line, _join_block(block)
            block = []
    if block:
        yield first_line, _join_block(block)


def _join_block(lines: List[bytes]) -> bytes:
    joined = b"".join(lines)
    if joined.endswith(b"\r\n"):
        return joined[:-2]
    return joined[:-1] if joined.endswith(b"\n") else joined
