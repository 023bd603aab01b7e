"""Find the input files and stream them as batches of raw records, never reading a file whole.

Records stay raw bytes here: decoding, JSON parsing and tokenizing happen in the worker
processes, so the reading process does little more than decompress and split lines.

Inputs may be plain, gzip (``.gz``) or Zstandard (``.zst``, the Pile's format) files; they are
decompressed as a stream. ``--partitions`` cuts the inputs into contiguous *segments*: whole
files, or byte ranges of a plain file that start at a line start.
"""

import glob
import gzip
import io
import os
import stat
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple, Union

JSONL = "jsonl"
TEXT = "text"
INPUT_FORMATS = (JSONL, TEXT)

# --text-document: what one document is in --input-format text.
TEXT_DOCUMENT_PER_FILE = "file"
TEXT_DOCUMENT_PER_BLOCK = "block"
TEXT_DOCUMENT_UNITS = (TEXT_DOCUMENT_PER_FILE, TEXT_DOCUMENT_PER_BLOCK)

# The files a directory given as --input contributes in JSONL mode (in text mode: every file
# whose name does not start with a dot).
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")

_UTF8_BOM = b"\xef\xbb\xbf"
_READ_BUFFER = 1 << 20

# (line number where the record starts, 1-based; the record's raw bytes)
RawRecord = Tuple[int, bytes]


class InputError(Exception):
    """An input path or file that cannot be used; the message is meant for the user."""


@dataclass
class Segment:
    """A contiguous piece of one input file: the whole file, or bytes ``[start, end)`` of a
    plain (uncompressed) file, where ``start`` is a line start."""

    path: str
    start: int = 0
    end: Optional[int] = None
    _lines_before: Optional[int] = field(default=None, repr=False, compare=False)

    def absolute_line(self, line: int) -> int:
        """The file's line number of line ``line`` of this segment (both 1-based). Counting the
        lines before ``start`` reads them, so it happens only when a location is reported."""
        if self.start == 0:
            return line
        if self._lines_before is None:
            count = 0
            with open(self.path, "rb") as handle:
                remaining = self.start
                while remaining:
                    chunk = handle.read(min(remaining, _READ_BUFFER))
                    if not chunk:
                        break
                    count += chunk.count(b"\n")
                    remaining -= len(chunk)
            self._lines_before = count
        return self._lines_before + line


@dataclass
class RecordBatch:
    """Consecutive records of one file, the unit of work sent to a worker process."""

    source: str
    records: List[RawRecord]
    num_bytes: int
    segment: Optional[Segment] = None

    def location(self, line: int) -> str:
        """``file:line`` of a record of this batch, for messages."""
        if self.segment is not None:
            line = self.segment.absolute_line(line)
        return f"{self.source}:{line}"


def compression_of(path: str) -> Optional[str]:
    """``"gzip"``, ``"zstd"`` or None (plain), from the file name."""
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith(".zst"):
        return "zstd"
    return None


def expand_inputs(patterns: Sequence[str], input_format: str = JSONL) -> List[str]:
    """The files named by ``--input``: paths, globs (``**`` recurses) and directories (their
    files, recursively: the JSONL ones, plain or compressed, or with ``input_format`` text every
    file not starting with a dot), in order, no repeats."""
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
            files = _files_in_directory(pattern, input_format)
            if not files:
                wanted = (", ".join(f"*{suffix}" for suffix in JSONL_SUFFIXES)
                          if input_format == JSONL else "files")
                raise InputError(f"input directory {pattern} holds no {wanted}")
            paths.extend(files)
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


def _files_in_directory(directory: str, input_format: str) -> List[str]:
    found = []
    for root, directories, names in os.walk(directory):
        directories[:] = [name for name in directories if not name.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            if input_format == JSONL and not name.endswith(JSONL_SUFFIXES):
                continue
            found.append(os.path.join(root, name))
    return sorted(found)


def total_input_bytes(paths: Sequence[str]) -> Optional[int]:
    """Combined size for the progress bar, or None when a pipe, a device or a compressed file
    (whose text size is unknown before reading it) makes it unknown."""
    total = 0
    for path in paths:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode) or compression_of(path):
            return None
        total += status.st_size
    return total


def plan_segments(paths: Sequence[str], partitions: int, splittable: bool) -> List[List[Segment]]:
    """Cut the inputs, in order, into at most ``partitions`` contiguous groups of about equal
    size. With ``splittable`` (line-based formats) a plain regular file may be cut inside, at a
    line start; compressed files, pipes and one-document-per-file text stay whole."""
    sizes = []
    for path in paths:
        status = os.stat(path)
        sizes.append(status.st_size if stat.S_ISREG(status.st_mode) else 0)
    total = sum(sizes)
    if partitions <= 1 or total == 0:
        return [[Segment(path) for path in paths]]
    target = total / partitions
    groups: List[List[Segment]] = [[]]
    filled = 0.0  # bytes of the current group
    for path, size in zip(paths, sizes):
        cuttable = (splittable and compression_of(path) is None and size > 0
                    and stat.S_ISREG(os.stat(path).st_mode))
        start = 0
        while cuttable and len(groups) < partitions and filled + (size - start) > target:
            cut = _next_line_start(path, start + int(target - filled))
            if cut >= size:
                break
            if cut > start:
                groups[-1].append(Segment(path, start, cut))
            groups.append([])
            filled, start = 0.0, cut
        groups[-1].append(Segment(path, start, None if start == 0 else size))
        filled += size - start
        if not cuttable and filled >= target and len(groups) < partitions:
            groups.append([])
            filled = 0.0
    return [group for group in groups if group]


def _next_line_start(path: str, offset: int) -> int:
    """The first line start at or after ``offset`` (a line start is right after a b"\\n")."""
    if offset <= 0:
        return 0
    with open(path, "rb") as handle:
        handle.seek(offset - 1)
        handle.readline()
        return handle.tell()


def iter_record_batches(
    inputs: Sequence[Union[str, Segment]],
    input_format: str,
    text_document: str = TEXT_DOCUMENT_PER_FILE,
    max_records: int = 1024,
    max_bytes: int = 1 << 20,
) -> Iterator[RecordBatch]:
    """Batches of at most ``max_records`` records or about ``max_bytes`` bytes, file by file
    (``inputs``: paths or segments)."""
    for item in inputs:
        segment = item if isinstance(item, Segment) else Segment(item)
        batch = RecordBatch(segment.path, [], 0, segment)
        for record in _iter_segment_records(segment, input_format, text_document):
            batch.records.append(record)
            batch.num_bytes += len(record[1])
            if len(batch.records) >= max_records or batch.num_bytes >= max_bytes:
                yield batch
                batch = RecordBatch(segment.path, [], 0, segment)
        if batch.records:
            yield batch


def _iter_segment_records(segment: Segment, input_format: str,
                          text_document: str) -> Iterator[RawRecord]:
    compression = compression_of(segment.path)
    try:
        handle = open(segment.path, "rb")
    except OSError as error:
        raise InputError(f"cannot open input {segment.path}: {error.strerror}") from error
    with handle:
        stream = handle
        if compression is not None:
            stream = _decompressing_reader(handle, compression)
        elif segment.start:
            handle.seek(segment.start)
        limit = segment.end - segment.start if segment.end is not None else None
        first_line_of_file = segment.start == 0
        try:
            if input_format == JSONL:
                yield from _jsonl_records(_lines(stream, limit), first_line_of_file)
            elif text_document == TEXT_DOCUMENT_PER_FILE:
                # The whole file is one document, so it is one record: it must be in memory to
                # be tokenized anyway.
                content = stream.read()
                yield 1, content[len(_UTF8_BOM):] if content.startswith(_UTF8_BOM) else content
            else:
                yield from _blank_line_blocks(_lines(stream, limit), first_line_of_file)
        except (EOFError, OSError) as error:
            raise InputError(f"{segment.path}: cannot read the {compression or 'file'} data: "
                             f"{_describe(error)}") from error
        except Exception as error:
            if type(error).__name__ == "ZstdError":  # zstandard's, a plain Exception
                raise InputError(f"{segment.path}: corrupt zstd data: {error}") from error
            raise


def _describe(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "the compressed stream ends early (truncated file)"
    return str(error) or type(error).__name__


def _decompressing_reader(handle, compression: str):
    if compression == "gzip":
        return gzip.GzipFile(fileobj=handle, mode="rb")
    return io.BufferedReader(_ZstdReader(handle), _READ_BUFFER)


class _ZstdReader(io.RawIOBase):
    """Streaming Zstandard decompression of a file of one or more concatenated frames. Unlike
    zstandard's stream_reader it reports a file cut inside a frame (truncated) instead of
    ending quietly."""

    def __init__(self, handle) -> None:
        try:
            import zstandard
        except ImportError as error:
            raise InputError(f"{handle.name}: reading .zst needs the zstandard package "
                             "(pip install zstandard)") from error
        self._new_frame = zstandard.ZstdDecompressor().decompressobj
        self._handle = handle
        self._frame = None       # decompressor of the frame being read, None between frames
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._handle.read(_READ_BUFFER)
            if not chunk:
                if self._frame is not None:
                    raise EOFError("truncated zstd frame")
                return 0
            self._pending = memoryview(self._decompress(chunk))
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _decompress(self, chunk: bytes) -> bytes:
        pieces = []
        while chunk:
            if self._frame is None:
                self._frame = self._new_frame()
            pieces.append(self._frame.decompress(chunk))
            if self._frame.eof:  # a frame ended inside this chunk: the rest starts the next
                chunk = self._frame.unused_data
                self._frame = None
            else:
                chunk = b""
        return b"".join(pieces)


def _lines(stream, limit: Optional[int]) -> Iterator[bytes]:
    """The lines of ``stream`` (binary, split on b"\\n" only), at most ``limit`` bytes of
    them (a segment ends at a line start, so it ends after a whole line)."""
    if limit is None:
        yield from stream
        return
    consumed = 0
    for line in stream:
        yield line
        consumed += len(line)
        if consumed >= limit:
            return


def _jsonl_records(lines: Iterator[bytes], first_line_of_file: bool) -> Iterator[RawRecord]:
    # Binary lines split on b"\n" only, as JSON Lines requires; str.splitlines would also split
    # inside strings at U+2028 and other Unicode line breaks.
    for line_number, line in enumerate(lines, start=1):
        if line_number == 1 and first_line_of_file and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM):]
        yield line_number, line


def _blank_line_blocks(lines: Iterator[bytes], first_line_of_file: bool) -> Iterator[RawRecord]:
    """Blocks of consecutive non-blank lines; the line break that ends a block is dropped."""
    block: List[bytes] = []
    first_line = 0
    for line_number, line in enumerate(lines, start=1):
        if line_number == 1 and first_line_of_file and line.startswith(_UTF8_BOM):
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
