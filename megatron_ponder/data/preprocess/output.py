"""Write ``<prefix>_<key>_document.bin/.idx`` atomically with megatron-core's IndexedDatasetBuilder.

Both files are written under temporary names (``<final name>.tmp-<pid>``) and renamed into place
only after every output of the run is complete, ``.idx`` last: megatron-core treats a prefix as
a dataset only when its ``.idx`` exists, so an interrupted run never leaves a readable but
truncated dataset under the final names.
"""

import os
import warnings
from typing import List, Optional, Sequence

import numpy


def _indexed_dataset_module():
    """megatron-core's indexed_dataset, imported without its TE/apex fallback warnings, which
    concern training kernels and would only be noise in a preprocessing log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


class OutputExistsError(Exception):
    """An output file appeared after the run started; its path is the message."""


DOCUMENT_LEVEL = "document"
SENTENCE_LEVEL = "sentence"


def dataset_prefix(output_prefix: str, key: str, level: str = DOCUMENT_LEVEL) -> str:
    """Megatron-LM's naming: prefix ``corpus`` and key ``text`` give ``corpus_text_document``
    (``corpus_text_sentence`` with ``--split-sentences``)."""
    return f"{output_prefix}_{key}_{level}"


def dataset_files(prefix: str) -> List[str]:
    """The ``.bin`` and ``.idx`` paths of a dataset prefix."""
    return [prefix + ".bin", prefix + ".idx"]


def token_dtype_for_vocab(vocab_size: int) -> numpy.dtype:
    """uint16 when every id fits (as Megatron-LM and Pythia's Pile use), else int32."""
    return numpy.dtype(_indexed_dataset_module().DType.optimal_dtype(vocab_size))


class AtomicDatasetWriter:
    """One dataset prefix being written under temporary names."""

    def __init__(self, prefix: str, dtype: numpy.dtype, temp_prefix: Optional[str] = None) -> None:
        """``temp_prefix``: write ``<temp_prefix>.bin/.idx`` instead of the default temporary
        names (a partition's part, which megatron-core reads back by prefix to merge it)."""
        self.prefix = prefix
        self.final_bin, self.final_idx = dataset_files(prefix)
        if temp_prefix is None:
            suffix = f".tmp-{os.getpid()}"
            self.temp_bin = self.final_bin + suffix
            self.temp_idx = self.final_idx + suffix
        else:
            self.temp_bin, self.temp_idx = dataset_files(temp_prefix)
        self._builder = _indexed_dataset_module().IndexedDatasetBuilder(
            self.temp_bin, dtype=dtype.type
        )

    def add_document(self, token_ids: numpy.ndarray,
                     sequence_lengths: Optional[Sequence[int]] = None) -> None:
        """Append one document: one sequence (as Megatron-LM stores it without sentence
        splitting), or the given sequences (sentences), whose lengths sum to its size."""
        self._builder.add_document(
            token_ids, [token_ids.size] if sequence_lengths is None else list(sequence_lengths))

    def add_dataset(self, prefix: str) -> None:
        """Append every document of the finished dataset ``prefix`` (megatron-core's
        ``add_index``: the index is concatenated, the data file copied)."""
        self._builder.add_index(prefix)

    def finalize(self) -> None:
        """Close the data file and write the index, both still under temporary names."""
        self._builder.finalize(self.temp_idx)
        for path in (self.temp_bin, self.temp_idx):
            _fsync(path)

    def discard(self) -> None:
        """Remove the temporary files (after an error or an interrupt)."""
        # IndexedDatasetBuilder has no close() of its own; only finalize() closes its file.
        self._builder.data_file.close()
        for path in (self.temp_bin, self.temp_idx):
            if os.path.exists(path):
                os.remove(path)


def commit(writers: Sequence[AtomicDatasetWriter], overwrite: bool) -> None:
    """Move finalized outputs to their final names; raises OutputExistsError without
    ``overwrite`` if one exists."""
    if not overwrite:
        existing = [path for writer in writers for path in (writer.final_bin, writer.final_idx)
                    if os.path.exists(path)]
        if existing:
            raise OutputExistsError(existing[0])
    else:
        # Drop the old index first, so that no moment pairs a new .bin with an old .idx.
        for writer in writers:
            if os.path.exists(writer.final_idx):
                os.remove(writer.final_idx)
    for writer in writers:
        os.replace(writer.temp_bin, writer.final_bin)
    for writer in writers:
        os.replace(writer.temp_idx, writer.final_idx)
    _fsync_directories({os.path.dirname(os.path.abspath(w.final_idx)) for w in writers})


def _fsync(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directories(directories) -> None:
    # Makes the renames themselves durable; not every filesystem allows opening a directory.
    for directory in directories:
        try:
            descriptor = os.open(directory, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)
