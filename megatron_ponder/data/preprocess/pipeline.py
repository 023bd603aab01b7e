"""The preprocessing run: inputs -> tokenizing workers -> megatron-core .bin/.idx, in input order.

The reading process streams batches of raw records to a pool of worker processes and writes the
results in input order, so the output is byte-identical for any ``workers``. At most a few
batches per worker are in flight: memory stays bounded however large the input (``Pool.imap``
would queue the whole input when the workers fall behind the reader).

With ``partitions`` > 1 the inputs are cut into that many contiguous pieces (files, or line
ranges of plain files), each read and tokenized by its own process (with ``workers //
partitions`` workers) into a temporary dataset; the parts are then concatenated in input order,
so the output is again byte-identical.
"""

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import numpy

from megatron_ponder.data.preprocess import encoder as encoder_module
from megatron_ponder.data.preprocess.encoder import (
    DocumentEncoder,
    EncoderSettings,
    RecordOutcome,
    RecordProblem,
    SplitDocument,
)
from megatron_ponder.data.preprocess.inputs import (
    INPUT_FORMATS,
    JSONL,
    TEXT_DOCUMENT_PER_FILE,
    TEXT_DOCUMENT_UNITS,
    InputError,
    RecordBatch,
    Segment,
    expand_inputs,
    iter_record_batches,
    plan_segments,
    total_input_bytes,
)
from megatron_ponder.data.preprocess.output import (
    DOCUMENT_LEVEL,
    SENTENCE_LEVEL,
    AtomicDatasetWriter,
    OutputExistsError,
    commit,
    dataset_files,
    dataset_prefix,
    token_dtype_for_vocab,
)
from megatron_ponder.data.preprocess.progress import ProgressReporter
from megatron_ponder.flags import option
from megatron_ponder.tokenizer import TokenizerError, TokenizerSpec, build_tokenizer

_BATCHES_IN_FLIGHT_PER_WORKER = 4
_INVALID_RECORDS_SHOWN = 10


class PreprocessError(Exception):
    """Bad arguments or bad input. The message is for the user; about a record it starts with
    ``file:line:``."""


@dataclass
class PreprocessConfig:
    """One preprocessing run: text in, tokenized .bin/.idx datasets out (tools/preprocess_data.py
    makes its flags from these fields)."""

    inputs: Sequence[str] = option(
        help="input files, globs (quote them; '**' recurses) or directories (their .jsonl/.json "
        "files, plain, .gz or .zst, recursively; with --input-format text every file); read in "
        "the order given, compressed files as a stream", flag="--input", metavar="PATH")
    output_prefix: str = option(
        help="writes <prefix>_<key>_document.bin and .idx (the directory must exist)")
    json_keys: Sequence[str] = option(
        ("text",), "keys of the JSON objects to tokenize, each into its own output dataset "
        "(jsonl only)", metavar="KEY")
    input_format: str = option(
        JSONL, "jsonl: one JSON object per line; text: plain UTF-8 text (see --text-document)",
        choices=INPUT_FORMATS)
    text_document: str = option(
        TEXT_DOCUMENT_PER_FILE, "with --input-format text: one document per file, or per block "
        "of lines separated by blank lines", choices=TEXT_DOCUMENT_UNITS)
    tokenizer: TokenizerSpec = option(
        help="the tokenizer (its flags: --tokenizer-type, --tokenizer-model, ...)",
        default_factory=TokenizerSpec, cli=False)
    append_eod: bool = option(False, "append the end-of-document token to every document")
    workers: int = option(
        1, "tokenizing processes in all; 1 tokenizes in the reading process. The output is "
        "identical for any value")
    partitions: int = option(
        1, "cut the input into N contiguous pieces (whole files, or line ranges of plain files) "
        "read and tokenized in parallel, each with --workers/N workers, then concatenated; the "
        "output is the same for any N")
    split_sentences: bool = option(
        False, "split each document into sentences (a built-in rule-based splitter), stored as "
        "the document's sequences; outputs are <prefix>_<key>_sentence.bin/.idx")
    keep_newlines: bool = option(
        False, "with --split-sentences: keep the line breaks between sentences (otherwise the "
        "whitespace between sentences is dropped)")
    log_interval: int = option(100, "documents between progress reports")
    skip_invalid: bool = option(
        False, "skip and count invalid records (malformed JSON, missing key, non-string value, "
        "invalid UTF-8) instead of stopping at the first one")
    overwrite: bool = option(False, "replace existing outputs (otherwise an existing output is "
                             "an error)")


@dataclass
class PreprocessSummary:
    """What a run wrote and skipped."""

    documents: int
    tokens: int
    skipped: Dict[str, int]
    input_bytes: int
    seconds: float
    """Reading, tokenizing and writing; the rates are per these seconds."""
    setup_seconds: float
    """Before the first record: imports, tokenizer loading, output checks."""
    output_prefixes: List[str]

    def format(self) -> str:
        seconds = max(self.seconds, 1e-9)
        skipped_total = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
        lines = [f"wrote {prefix}.bin/.idx" for prefix in self.output_prefixes]
        lines.append(
            f"documents: {self.documents} | tokens: {self.tokens} | "
            f"skipped: {skipped_total}{f' ({reasons})' if reasons else ''} | "
            f"seconds: {self.seconds:.2f} (+{self.setup_seconds:.2f} setup) | "
            f"documents/s: {self.documents / seconds:.1f} | "
            f"tokens/s: {self.tokens / seconds:.0f} | "
            f"MB/s: {self.input_bytes / seconds / 1e6:.2f}"
        )
        return "\n".join(lines)


def available_cpus() -> int:
    """The CPUs this process may run on (the default number of tokenizing workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_preprocessing(
    config: PreprocessConfig, log: Optional[TextIO] = None
) -> PreprocessSummary:
    """Tokenize ``config.inputs`` into megatron-core indexed datasets.

    Raises PreprocessError for bad arguments or input, after removing everything it wrote;
    KeyboardInterrupt likewise propagates after the cleanup. Nothing appears under the final
    output names unless the whole run succeeds. Progress and warnings go to ``log`` (default:
    the current ``sys.stderr``).
    """
    log = log or sys.stderr
    setup_start = time.monotonic()
    keys = _validated_keys(config)
    try:
        paths = expand_inputs(config.inputs, config.input_format)
    except InputError as error:
        raise PreprocessError(str(error)) from error
    level = SENTENCE_LEVEL if config.split_sentences else DOCUMENT_LEVEL
    prefixes = [dataset_prefix(config.output_prefix, key, level) for key in keys]
    _check_outputs(prefixes, config.overwrite)
    try:
        tokenizer = build_tokenizer(config.tokenizer)
    except TokenizerError as error:
        raise PreprocessError(str(error)) from error
    dtype = token_dtype_for_vocab(tokenizer.vocab_size)
    settings = EncoderSettings(
        tokenizer=config.tokenizer, input_format=config.input_format, keys=tuple(keys),
        append_eod=config.append_eod, token_dtype=dtype.name,
        split_sentences=config.split_sentences, keep_newlines=config.keep_newlines,
    )
    if config.keep_newlines and not config.split_sentences:
        log.write("warning: --keep-newlines has no effect without --split-sentences "
                  "(documents are always stored with their line breaks)\n")
    # Cutting inside a file is safe only where a record is one line.
    plan = plan_segments(paths, config.partitions, splittable=config.input_format == JSONL)

    writers: List[AtomicDatasetWriter] = []
    progress: Optional[ProgressReporter] = None
    # Throughput counts from here: the one-off setup (megatron-core import, tokenizer load) is
    # reported separately.
    start = time.monotonic()
    try:
        if len(plan) == 1:
            # The pool starts before any output file is open or progress thread runs, so
            # forked workers inherit neither.
            with _EncodingBackend(settings, config.workers) as encode_in_order:
                for prefix in prefixes:
                    writers.append(AtomicDatasetWriter(prefix, dtype))
                progress = ProgressReporter(log, total_input_bytes(paths), config.log_interval)
                batches = iter_record_batches(plan[0], config.input_format,
                                              config.text_document)
                counts = _write_documents(encode_in_order(batches), writers, config, progress,
                                          log)
        else:
            counts = _run_partitions(plan, prefixes, dtype, settings, config, log, writers)
        if counts[0] == 0:  # an empty dataset would only fail later, inside training
            skipped = sum(counts[2].values())
            raise PreprocessError(
                f"no documents in {', '.join(paths)}"
                + (f" ({skipped} records skipped)" if skipped else " (the input is empty)")
                + ": nothing written")
        for writer in writers:
            writer.finalize()
        commit(writers, config.overwrite)
    except BaseException as error:
        for writer in writers:
            writer.discard()
        if isinstance(error, OutputExistsError):
            raise PreprocessError(
                f"output {error} appeared while this run was writing; pass --overwrite to "
                "replace it"
            ) from error
        if isinstance(error, OSError):
            raise PreprocessError(_describe_os_error(error)) from error
        raise
    finally:
        if progress is not None:
            progress.close()
    documents, tokens, skipped, input_bytes = counts
    return PreprocessSummary(
        documents=documents, tokens=tokens, skipped=dict(skipped), input_bytes=input_bytes,
        seconds=time.monotonic() - start, setup_seconds=start - setup_start,
        output_prefixes=prefixes,
    )


def _write_documents(
    encoded: Iterator[Tuple[RecordBatch, List[RecordOutcome]]],
    writers: Sequence[AtomicDatasetWriter],
    config: PreprocessConfig,
    progress: ProgressReporter,
    log: TextIO,
) -> Tuple[int, int, collections.Counter, int]:
    documents = tokens = input_bytes = 0
    skipped: collections.Counter = collections.Counter()
    invalid_shown = 0
    try:
        for batch, outcomes in encoded:
            for outcome in outcomes:
                if isinstance(outcome, RecordProblem):
                    location = batch.location(outcome.line)
                    if outcome.is_invalid:
                        if not config.skip_invalid:
                            raise PreprocessError(
                                f"{location}: {outcome.detail} (pass --skip-invalid to skip "
                                "invalid records)"
                            )
                        if invalid_shown < _INVALID_RECORDS_SHOWN:
                            log.write(f"warning: {location}: {outcome.detail}; skipped\n")
                        invalid_shown += 1
                    skipped[outcome.reason] += 1
                    continue
                for writer, encoded in zip(writers, outcome):
                    if isinstance(encoded, SplitDocument):
                        writer.add_document(encoded.ids, encoded.sentence_lengths)
                        tokens += encoded.ids.size
                    else:
                        writer.add_document(encoded)
                        tokens += encoded.size
                documents += 1
            input_bytes += batch.num_bytes
            progress.update(batch.num_bytes, documents, tokens)
    except InputError as error:
        raise PreprocessError(str(error)) from error
    if invalid_shown > _INVALID_RECORDS_SHOWN:
        log.write(f"warning: {invalid_shown - _INVALID_RECORDS_SHOWN} more invalid records "
                  "skipped\n")
    return documents, tokens, skipped, input_bytes


def _describe_os_error(error: OSError) -> str:
    if error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def _validated_keys(config: PreprocessConfig) -> List[str]:
    if config.input_format not in INPUT_FORMATS:
        raise PreprocessError(
            f"unknown input format {config.input_format!r}; expected one of {list(INPUT_FORMATS)}"
        )
    if config.text_document not in TEXT_DOCUMENT_UNITS:
        raise PreprocessError(
            f"unknown text document unit {config.text_document!r}; expected one of "
            f"{list(TEXT_DOCUMENT_UNITS)}"
        )
    if config.workers < 1:
        raise PreprocessError(f"--workers must be at least 1, got {config.workers}")
    if config.partitions < 1:
        raise PreprocessError(f"--partitions must be at least 1, got {config.partitions}")
    if config.input_format != JSONL:
        return ["text"]
    keys = list(config.json_keys)
    if not keys:
        raise PreprocessError("--json-keys needs at least one key")
    if len(set(keys)) != len(keys):
        raise PreprocessError(f"--json-keys repeats a key: {keys}")
    for key in keys:
        if not key or os.sep in key or "\0" in key:
            raise PreprocessError(f"--json-keys {key!r} cannot be part of an output file name")
    return keys


def _check_outputs(prefixes: Sequence[str], overwrite: bool) -> None:
    directory = os.path.dirname(os.path.abspath(prefixes[0]))
    if not os.path.isdir(directory):
        raise PreprocessError(f"output directory does not exist: {directory}")
    if overwrite:
        return
    for prefix in prefixes:
        for path in dataset_files(prefix):
            if os.path.exists(path):
                raise PreprocessError(
                    f"output {path} already exists; pass --overwrite to replace it"
                )


class _EncodingBackend:
    """Context manager giving ``encode_in_order(batches) -> iterator of (batch, outcomes)``.

    One worker encodes in this process (no pickling, no pool); more run a process pool.
    """

    def __init__(self, settings: EncoderSettings, workers: int) -> None:
        self._settings = settings
        self._workers = workers
        self._pool = None

    def __enter__(self) -> Callable[[Iterator[RecordBatch]], Iterator]:
        if self._workers == 1:
            encoder = DocumentEncoder(self._settings)
            return lambda batches: ((batch, encoder.encode_batch(batch.records))
                                    for batch in batches)
        # The worker side imports neither torch nor megatron, so any start method is cheap.
        context = multiprocessing.get_context()
        self._pool = context.Pool(
            self._workers, initializer=encoder_module.initialize_worker,
            initargs=(self._settings,),
        )
        return self._encode_in_pool

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._pool is None:
            return
        if exc_type is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()

    def _encode_in_pool(self, batches: Iterator[RecordBatch]):
        in_flight = collections.deque()
        limit = _BATCHES_IN_FLIGHT_PER_WORKER * self._workers
        for batch in batches:
            in_flight.append((batch, self._pool.apply_async(
                encoder_module.encode_batch_in_worker, (batch.records,))))
            if len(in_flight) >= limit:
                finished, result = in_flight.popleft()
                yield finished, result.get()
        while in_flight:
            finished, result = in_flight.popleft()
            yield finished, result.get()


# --- partitions -------------------------------------------------------------------------------

class _PartitionStopped(BaseException):
    """SIGTERM in a partition process (its parent stops it): clean up, then exit."""


def _run_partitions(
    plan: List[List[Segment]],
    prefixes: Sequence[str],
    dtype,
    settings: EncoderSettings,
    config: PreprocessConfig,
    log: TextIO,
    writers: List[AtomicDatasetWriter],
) -> Tuple[int, int, collections.Counter, int]:
    """Tokenize every partition in its own process, then append the parts, in input order, to
    new ``writers`` (added to the list given, so the caller cleans them up on failure)."""
    workers_each = max(1, config.workers // len(plan))
    context = multiprocessing.get_context()
    part_prefixes = [[f"{prefix}.part{index}-tmp{os.getpid()}" for prefix in prefixes]
                     for index in range(len(plan))]
    processes, connections = [], {}
    try:
        for index, segments in enumerate(plan):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_partition_main, name=f"preprocess-partition-{index}",
                args=(index, len(plan), segments, settings, config, workers_each,
                      part_prefixes[index], prefixes, sender))
            process.start()
            sender.close()
            processes.append(process)
            connections[receiver] = index
        results = _collect_partition_results(connections, processes, log)
        for prefix in prefixes:
            writers.append(AtomicDatasetWriter(prefix, dtype))
        for parts in part_prefixes:
            for writer, part in zip(writers, parts):
                writer.add_dataset(part)
                for path in dataset_files(part):
                    os.remove(path)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
        for parts in part_prefixes:
            for part in parts:
                for path in dataset_files(part):
                    if os.path.exists(path):
                        os.remove(path)
    documents = tokens = input_bytes = 0
    skipped: collections.Counter = collections.Counter()
    for part_documents, part_tokens, part_skipped, part_bytes in results:
        documents += part_documents
        tokens += part_tokens
        skipped.update(part_skipped)
        input_bytes += part_bytes
    return documents, tokens, skipped, input_bytes


def _collect_partition_results(connections: Dict, processes: List, log: TextIO) -> List:
    """Relay the partitions' log lines until each has reported its counts; the first error
    stops the whole run."""
    results = [None] * len(processes)
    while connections:
        for connection in multiprocessing.connection.wait(list(connections)):
            index = connections[connection]
            try:
                kind, payload = connection.recv()
            except EOFError:
                processes[index].join()
                raise PreprocessError(
                    f"partition {index} stopped unexpectedly (exit code "
                    f"{processes[index].exitcode})") from None
            if kind == "log":
                log.write(payload)
                log.flush()
            elif kind == "error":
                raise PreprocessError(payload)
            else:
                results[index] = payload
                del connections[connection]
    return results


class _PipeLog:
    """A text stream that sends whole lines, prefixed, to the parent process."""

    def __init__(self, connection, prefix: str) -> None:
        self._connection = connection
        self._prefix = prefix

    def write(self, text: str) -> None:
        lines = "".join(self._prefix + line for line in text.splitlines(keepends=True))
        self._connection.send(("log", lines))

    def flush(self) -> None:
        pass


def _partition_main(index, count, segments, settings, config, workers, part_prefixes,
                    final_prefixes, connection) -> None:
    """A partition process: tokenize ``segments`` into the temporary datasets
    ``part_prefixes`` and send ("done", counts) or ("error", message) to the parent."""
    # Ctrl-C reaches the whole process group; the parent decides, and stops partitions with
    # SIGTERM, which must clean up here (stop this partition's pool, remove its files).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def stop(signum, frame):
        raise _PartitionStopped()

    signal.signal(signal.SIGTERM, stop)
    log = _PipeLog(connection, f"partition {index + 1}/{count}: ")
    writers: List[AtomicDatasetWriter] = []
    dtype = numpy.dtype(settings.token_dtype)
    try:
        with _EncodingBackend(settings, workers) as encode_in_order:
            for final, part in zip(final_prefixes, part_prefixes):
                writers.append(AtomicDatasetWriter(final, dtype, temp_prefix=part))
            progress = ProgressReporter(log, None, config.log_interval, use_bar=False)
            batches = iter_record_batches(segments, config.input_format, config.text_document)
            documents, tokens, skipped, input_bytes = _write_documents(
                encode_in_order(batches), writers, config, progress, log)
        for writer in writers:
            writer.finalize()
        connection.send(("done", (documents, tokens, dict(skipped), input_bytes)))
    except _PartitionStopped:
        for writer in writers:
            writer.discard()
    except BaseException as error:  # reported to the parent, which stops the run
        for writer in writers:
            writer.discard()
        if isinstance(error, PreprocessError):
            message = str(error)
        elif isinstance(error, OSError):
            message = _describe_os_error(error)
        else:
            message = (f"partition {index + 1}/{count} failed: "
                       f"{''.join(traceback.format_exception_only(type(error), error)).strip()}")
        try:
            connection.send(("error", message))
        except OSError:
            pass
    finally:
        connection.close()
