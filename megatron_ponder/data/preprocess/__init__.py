"""Tokenize JSONL or text into megatron-core indexed datasets (``tools/preprocess_data.py``).

    from megatron_ponder.data.preprocess import PreprocessConfig, run_preprocessing
    summary = run_preprocessing(PreprocessConfig(
        inputs=["corpus.jsonl"], output_prefix="out/corpus", append_eod=True, workers=2))
    # -> out/corpus_text_document.bin/.idx
"""

from megatron_ponder.data.preprocess.encoder import NORMAL_SKIP_REASONS
from megatron_ponder.data.preprocess.inputs import (
    INPUT_FORMATS,
    JSONL,
    TEXT,
    TEXT_DOCUMENT_PER_BLOCK,
    TEXT_DOCUMENT_PER_FILE,
    TEXT_DOCUMENT_UNITS,
)
from megatron_ponder.data.preprocess.output import dataset_prefix
from megatron_ponder.data.preprocess.pipeline import (
    PreprocessConfig,
    PreprocessError,
    PreprocessSummary,
    available_cpus,
    run_preprocessing,
)

__all__ = [
    "INPUT_FORMATS",
    "JSONL",
    "NORMAL_SKIP_REASONS",
    "TEXT",
    "TEXT_DOCUMENT_PER_BLOCK",
    "TEXT_DOCUMENT_PER_FILE",
    "TEXT_DOCUMENT_UNITS",
    "PreprocessConfig",
    "PreprocessError",
    "PreprocessSummary",
    "available_cpus",
    "dataset_prefix",
    "run_preprocessing",
]
