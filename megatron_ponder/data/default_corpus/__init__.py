"""The bundled default corpus (Wikipedia leads + Shakespeare, optionally Debian docs).

Built by ``tools/prepare_default_corpus.py`` from packages that install offline; see
``builder.py`` for the layout and the fixed train/validation split.
"""

from megatron_ponder.data.default_corpus.builder import (
    RECIPE_VERSION,
    SHAKESPEARE_VALIDATION_WORKS,
    VALIDATION_PERCENT,
    DefaultCorpus,
    is_validation,
    prepare_default_corpus,
    prepare_default_jsonl,
)
from megatron_ponder.data.default_corpus.sources import Document, SourceError

__all__ = [
    "RECIPE_VERSION",
    "SHAKESPEARE_VALIDATION_WORKS",
    "VALIDATION_PERCENT",
    "DefaultCorpus",
    "Document",
    "SourceError",
    "is_validation",
    "prepare_default_corpus",
    "prepare_default_jsonl",
]
