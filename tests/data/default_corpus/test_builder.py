"""prepare_default_corpus: the fixed split, exact tokenization, and doing nothing twice."""

import io
import json
import os
import shutil

import pytest

from megatron_ponder.data.default_corpus import (
    DefaultCorpus,
    Document,
    is_validation,
    prepare_default_corpus,
)
from megatron_ponder.tokenizer import build_tokenizer

from .fake_sources import SHAKESPEARE_WORKS, WIKIPEDIA_TITLES, wikipedia_text, write_fake_sources


def _read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cache = root / "cache"
    write_fake_sources(str(cache))
    log = io.StringIO()
    prepare_default_corpus(str(root / "out"), cache_dir=str(cache), workers=1, log=log)
    return root, log.getvalue()


@pytest.fixture()
def built(tmp_path, built_once):
    """A private copy of one build: (root, corpus, log of the build)."""
    root, log = built_once
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    out = tmp_path / "out" / "gpt-neox-20b"
    corpus = DefaultCorpus(str(out / "train_text_document"), str(out / "valid_text_document"))
    return tmp_path, corpus, log


@pytest.mark.parametrize("document, validation", [
    # Real Wikipedia titles on either side of the 2% hash rule, and Shakespeare's works.
    (Document("wikipedia", "Age of Enlightenment", ""), True),
    (Document("wikipedia", "Alps", ""), True),
    (Document("wikipedia", "100 metres", ""), False),
    (Document("wikipedia", "14th Dalai Lama", ""), False),
    (Document("shakespeare", "tempest", ""), True),
    (Document("shakespeare", "hamlet", ""), False),
])
def test_the_split_is_fixed(document, validation):
    assert is_validation(document) == validation


def test_jsonl_holds_every_document_on_its_side_of_the_split(built):
    tmp_path, _, _ = built
    train = _read_jsonl(tmp_path / "out" / "jsonl" / "train.jsonl")
    valid = _read_jsonl(tmp_path / "out" / "jsonl" / "valid.jsonl")

    wiki_valid = [t for t in WIKIPEDIA_TITLES if is_validation(Document("wikipedia", t, ""))]
    wiki_train = [t for t in WIKIPEDIA_TITLES if t not in wiki_valid]
    assert 0 < len(wiki_valid) < 0.05 * len(WIKIPEDIA_TITLES)
    assert [(d["source"], d["id"]) for d in valid] == (
        [("wikipedia", t) for t in wiki_valid] + [("shakespeare", "tempest")])
    assert [(d["source"], d["id"]) for d in train] == (
        [("wikipedia", t) for t in wiki_train] + [("shakespeare", "hamlet")])
    assert train[0]["text"] == wikipedia_text(wiki_train[0])
    assert valid[-1]["text"] == SHAKESPEARE_WORKS["tempest"].strip()


def test_tokenized_splits_match_the_jsonl(built):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tmp_path, corpus, _ = built
    tokenizer = build_tokenizer()
    tokenized = tmp_path / "out" / "gpt-neox-20b"
    assert corpus.train_prefix == str(tokenized / "train_text_document")
    assert corpus.valid_prefix == str(tokenized / "valid_text_document")
    assert corpus.data_args() == ["--train-data-path", corpus.train_prefix,
                                  "--valid-data-path", corpus.valid_prefix]
    for split, prefix in (("train", corpus.train_prefix), ("valid", corpus.valid_prefix)):
        dataset = IndexedDataset(prefix)
        texts = [d["text"] for d in _read_jsonl(tmp_path / "out" / "jsonl" / f"{split}.jsonl")]
        assert [dataset[i].tolist() for i in range(len(dataset))] == [
            tokenizer.tokenize(text) + [tokenizer.eod] for text in texts]


def test_a_second_run_does_nothing_and_needs_no_downloads(built):
    tmp_path, corpus, first_log = built
    assert "fetching sources" in first_log
    output = tmp_path / "out"
    stamps = {path: os.stat(path).st_mtime_ns for path in output.rglob("*") if path.is_file()}
    shutil.rmtree(tmp_path / "cache")

    log = io.StringIO()
    again = prepare_default_corpus(str(output), cache_dir=str(tmp_path / "cache"), log=log)

    assert again == corpus
    assert "fetching" not in log.getvalue() and "tokenizing" not in log.getvalue()
    assert log.getvalue().count("up to date") == 2
    assert {path: os.stat(path).st_mtime_ns for path in output.rglob("*")
            if path.is_file()} == stamps
    assert not (tmp_path / "cache").exists()


def test_a_missing_output_is_rebuilt_from_the_jsonl(built):
    tmp_path, corpus, _ = built
    jsonl = tmp_path / "out" / "jsonl" / "train.jsonl"
    jsonl_stamp = os.stat(jsonl).st_mtime_ns
    os.remove(corpus.valid_prefix + ".idx")

    log = io.StringIO()
    prepare_default_corpus(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), log=log)

    assert os.path.isfile(corpus.valid_prefix + ".idx")
    assert "JSONL is up to date" in log.getvalue() and "tokenizing" in log.getvalue()
    assert os.stat(jsonl).st_mtime_ns == jsonl_stamp
