"""tools/preprocess_data.py: exact round trips, clean failures, nothing left behind."""

import json
import os
import random
import re
import subprocess
import sys

import numpy
import pytest

from megatron_ponder.tokenizer import build_tokenizer

from .conftest import TOOLS_DIR

TOOL = os.path.join(TOOLS_DIR, "preprocess_data.py")


@pytest.fixture(scope="module")
def neox():
    return build_tokenizer()


@pytest.fixture(scope="module")
def corpus(neox):
    """Varied documents over three worker batches (a batch is 1024 records or 1 MB), with
    their expected ids."""
    rng = random.Random(0)
    words = ["alpha", "Beta", "γάμμα", "東京", "🚀", "don't", "x=1;", "\n", "\t", "  ", "3.14"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(2500)]
    texts[10] = "Hello world"
    texts[11] = "line one\nline two\r\n\u2028after a unicode line separator"
    return texts, [neox.tokenize(text) for text in texts]


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record if isinstance(record, str) else json.dumps(record) + "\n")


def _read_documents(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    return dataset, [dataset[index].tolist() for index in range(len(dataset))]


def _run(tool, argv, capsys):
    status = tool.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_round_trip_gives_the_tokenizer_ids(tmp_path, preprocess_tool, neox, corpus, capsys):
    """JSONL -> .bin/.idx -> IndexedDataset returns exactly the tokenizer's ids, with and
    without --append-eod, with 1 and 2 workers (and the same bytes for both)."""
    texts, expected_ids = corpus
    records = [{"text": text, "id": index} for index, text in enumerate(texts)]
    records.insert(7, {"text": ""})   # empty: skipped and counted
    records.insert(20, "\n")          # blank line: skipped and counted
    _write_jsonl(tmp_path / "corpus.jsonl", records)

    for append_eod in (False, True):
        eod = [neox.eod] if append_eod else []
        for workers in (1, 2):
            prefix = tmp_path / f"out_eod{int(append_eod)}_w{workers}"
            argv = ["--input", tmp_path / "corpus.jsonl", "--output-prefix", prefix,
                    "--workers", workers, "--log-interval", 1000]
            status, out, err = _run(preprocess_tool,
                                    argv + (["--append-eod"] if append_eod else []), capsys)

            assert status == 0, err
            dataset, documents = _read_documents(f"{prefix}_text_document")
            assert documents == [ids + eod for ids in expected_ids]
            assert dataset.index.dtype == numpy.uint16
            # One sequence per document, as Megatron-LM writes without sentence splitting.
            assert dataset.document_indices.tolist() == list(range(len(texts) + 1))
            total_tokens = sum(map(len, documents))
            assert f"documents: {len(texts)} | tokens: {total_tokens} | " in out
            assert "skipped: 2 (blank line: 1, empty document: 1)" in out
            # Plain progress lines off a terminal, after the first batch of 1024 records.
            assert "processed documents: 1022 | tokens: " in err
        for suffix in (".bin", ".idx"):
            one_worker = (tmp_path / f"out_eod{int(append_eod)}_w1_text_document{suffix}")
            two_workers = (tmp_path / f"out_eod{int(append_eod)}_w2_text_document{suffix}")
            assert one_worker.read_bytes() == two_workers.read_bytes()
    assert len(os.listdir(tmp_path)) == 1 + 4 * 2  # no temporary files left


def test_a_document_larger_than_a_batch(tmp_path, preprocess_tool, neox, capsys):
    sentence = "A very large document keeps going, line after line.\n"
    big = sentence * ((1 << 20) // len(sentence) + 2000)  # ~1.1 MB: more than a batch
    _write_jsonl(tmp_path / "in.jsonl", [{"text": "small"}, {"text": big}, {"text": "tail"}])
    status, _, err = _run(preprocess_tool, [
        "--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out", "--workers", 2,
        "--append-eod"], capsys)
    assert status == 0, err
    _, documents = _read_documents(str(tmp_path / "out_text_document"))
    assert documents == [neox.tokenize(text) + [0] for text in ("small", big, "tail")]


def test_several_json_keys_and_several_inputs(tmp_path, preprocess_tool, neox, capsys):
    _write_jsonl(tmp_path / "a.jsonl", [{"text": "first body", "title": "First"},
                                        {"text": "second body", "title": "Second"}])
    _write_jsonl(tmp_path / "b.jsonl", [{"title": "Third", "text": "third body"}])
    status, out, err = _run(preprocess_tool, [
        "--input", tmp_path / "b.jsonl", tmp_path / "a.jsonl", "--json-keys", "text", "title",
        "--output-prefix", tmp_path / "multi", "--workers", 2], capsys)
    assert status == 0, err
    for key, texts in (("text", ["third body", "first body", "second body"]),
                       ("title", ["Third", "First", "Second"])):
        _, documents = _read_documents(str(tmp_path / f"multi_{key}_document"))
        assert documents == [neox.tokenize(text) for text in texts]


def test_text_input_per_file_and_per_block(tmp_path, preprocess_tool, neox, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Alpha para.\n\nSecond para.\n", encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_text("\n\nBeta only\n", encoding="utf-8")
    glob_pattern = tmp_path / "docs" / "*.txt"

    status, _, err = _run(preprocess_tool, [
        "--input", glob_pattern, "--input-format", "text", "--output-prefix", tmp_path / "files",
        "--append-eod", "--workers", 1], capsys)
    assert status == 0, err
    _, documents = _read_documents(str(tmp_path / "files_text_document"))
    assert documents == [neox.tokenize("Alpha para.\n\nSecond para.\n") + [0],
                         neox.tokenize("\n\nBeta only\n") + [0]]

    status, _, err = _run(preprocess_tool, [
        "--input", glob_pattern, "--input-format", "text", "--text-document", "block",
        "--output-prefix", tmp_path / "blocks", "--workers", 2], capsys)
    assert status == 0, err
    _, documents = _read_documents(str(tmp_path / "blocks_text_document"))
    assert documents == [neox.tokenize(text) for text in ("Alpha para.", "Second para.",
                                                          "Beta only")]


BAD_JSONL_CASES = [
    # (lines of the file, failing line number, expected message fragment)
    ([b'{"text": "ok"}', b'{"text": "ok"', b'{"text": "never read"}'], 2,
     "malformed JSON: Expecting ',' delimiter at column 14"),
    ([b'{"text": "ok"}', b'{"body": "ok"}'], 2, "missing key 'text'"),
    ([b'{"text": 3}'], 1, "key 'text' holds a number, expected a string"),
    ([b'{"text": "ok"}', b'{"text": "ok"}', b'[1, 2]'], 3, "expected a JSON object"),
    ([b'{"text": "ok"}', b'{"text": "bad \xc3\x28 byte"}'], 2,
     "invalid UTF-8: byte 0xc3 at byte 15 of the line"),
    ([b'{"text": "lone \\udc80 surrogate"}'], 1, "key 'text' holds an unpaired UTF-16 surrogate"),
]


@pytest.mark.parametrize("lines, bad_line, message", BAD_JSONL_CASES)
def test_bad_input_stops_with_file_and_line_and_writes_nothing(
        tmp_path, preprocess_tool, capsys, lines, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    status, out, err = _run(preprocess_tool, [
        "--input", path, "--output-prefix", tmp_path / "out", "--workers", 1], capsys)
    assert status == 1
    assert err.startswith(f"error: {path}:{bad_line}: {message}"), err
    assert "--skip-invalid" in err
    assert out == ""
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # no final names, no temporary files


@pytest.mark.parametrize("content, reason", [
    (b"", "the input is empty"),
    (b'{"text": ""}\n\n', "2 records skipped"),  # an empty document and a blank line
])
def test_input_without_documents_writes_nothing(tmp_path, preprocess_tool, capsys, content,
                                                reason):
    # An empty dataset would be trusted by a training run and fail only inside megatron-core.
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    status, out, err = _run(preprocess_tool, [
        "--input", path, "--output-prefix", tmp_path / "out", "--workers", 1], capsys)
    assert status == 1
    assert err == f"error: no documents in {path} ({reason}): nothing written\n"
    assert os.listdir(tmp_path) == ["empty.jsonl"]


def test_bad_line_in_a_later_input_names_that_file(tmp_path, preprocess_tool, capsys):
    """The same with worker processes: the pool is stopped while batches are in flight."""
    _write_jsonl(tmp_path / "good.jsonl", [{"text": f"doc {i}"} for i in range(3000)])
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": 1.5}\n')
    status, _, err = _run(preprocess_tool, [
        "--input", tmp_path / "good.jsonl", tmp_path / "bad.jsonl",
        "--output-prefix", tmp_path / "out", "--workers", 2], capsys)
    assert status == 1
    assert f"error: {tmp_path / 'bad.jsonl'}:2: key 'text' holds a number" in err
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "good.jsonl"]


def test_invalid_utf8_in_a_text_file_names_its_line(tmp_path, preprocess_tool, capsys):
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\nthr\xffee\n")
    status, _, err = _run(preprocess_tool, [
        "--input", tmp_path / "a.txt", "--input-format", "text",
        "--output-prefix", tmp_path / "out", "--workers", 1], capsys)
    assert status == 1
    assert err.startswith(f"error: {tmp_path / 'a.txt'}:3: invalid UTF-8: byte 0xff")
    assert os.listdir(tmp_path) == ["a.txt"]


def test_skip_invalid_skips_counts_and_reports_locations(tmp_path, preprocess_tool, neox,
                                                         capsys):
    lines = [b'{"text": "kept one"}', b"{broken", b'{"text": null}', b'{"other": "x"}',
             b'{"text": "\xff"}', b'{"text": ""}', b'{"text": "kept two"}']
    lines += [b"[]"] * 12  # more invalid records than the warnings list
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    status, out, err = _run(preprocess_tool, [
        "--input", path, "--output-prefix", tmp_path / "out", "--skip-invalid",
        "--workers", 2], capsys)
    assert status == 0, err
    _, documents = _read_documents(str(tmp_path / "out_text_document"))
    assert documents == [neox.tokenize("kept one"), neox.tokenize("kept two")]
    assert f"warning: {path}:2: malformed JSON" in err
    assert f"warning: {path}:5: invalid UTF-8" in err
    assert "warning: 6 more invalid records skipped" in err
    assert ("skipped: 17 (empty document: 1, invalid UTF-8: 1, malformed JSON: 1, "
            "missing key: 1, non-string value: 1, not a JSON object: 12)") in out


def test_existing_outputs_need_overwrite(tmp_path, preprocess_tool, neox, capsys):
    _write_jsonl(tmp_path / "in.jsonl", [{"text": "new content"}])
    (tmp_path / "out_text_document.bin").write_bytes(b"old")
    (tmp_path / "out_text_document.idx").write_bytes(b"old")
    argv = ["--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out",
            "--workers", 1]

    status, _, err = _run(preprocess_tool, argv, capsys)
    assert status == 1
    assert f"output {tmp_path / 'out_text_document.bin'} already exists" in err
    assert (tmp_path / "out_text_document.bin").read_bytes() == b"old"
    assert (tmp_path / "out_text_document.idx").read_bytes() == b"old"

    status, _, err = _run(preprocess_tool, argv + ["--overwrite"], capsys)
    assert status == 0, err
    _, documents = _read_documents(str(tmp_path / "out_text_document"))
    assert documents == [neox.tokenize("new content")]


@pytest.mark.parametrize("argv_tail, message", [
    (["--input", "{tmp}/absent.jsonl"], "input file not found"),
    (["--input", "{tmp}/*.none"], "matches no files"),
    (["--input", "{tmp}/empty_dir"], "holds no"),
    (["--input", "{tmp}/in.jsonl", "--partitions", "0"], "--partitions must be at least 1"),
    (["--input", "{tmp}/in.jsonl", "--output-prefix", "{tmp}/missing/dir/out"],
     "output directory does not exist"),
    (["--input", "{tmp}/in.jsonl", "--input-format", "text", "--json-keys", "text"],
     "--json-keys applies to --input-format jsonl only"),
    (["--input", "{tmp}/in.jsonl", "--workers", "0"], "--workers must be at least 1"),
    (["--input", "{tmp}/in.jsonl", "--tokenizer-model", "{tmp}/no-such-tokenizer.json"],
     "is not a local file"),
])
def test_unusable_arguments_fail_cleanly(tmp_path, preprocess_tool, capsys, argv_tail,
                                         message, monkeypatch):
    # A missing tokenizer path would otherwise be tried as a hub name, with retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    (tmp_path / "empty_dir").mkdir()
    argv = ["--output-prefix", str(tmp_path / "out")] + [
        part.format(tmp=tmp_path) for part in argv_tail]
    status, _, err = _run(preprocess_tool, argv, capsys)
    assert status == 1
    assert err.startswith("error: ") and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["empty_dir", "in.jsonl"]


def test_help_documents_every_flag():
    completed = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 0
    for flag in ("--input", "--input-format", "--json-keys", "--text-document",
                 "--skip-invalid", "--tokenizer-type", "--tokenizer-model", "--vocab-file",
                 "--merge-file", "--append-eod", "--output-prefix", "--overwrite", "--workers",
                 "--partitions", "--split-sentences", "--keep-newlines",
                 "--log-interval", "HuggingFaceTokenizer", "GPT2BPETokenizer"):
        assert flag in completed.stdout


def test_a_real_process_reports_bad_input_without_a_traceback(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "a"}\n{"text": "b",}\n')
    completed = subprocess.run(
        [sys.executable, TOOL, "--input", "in.jsonl", "--output-prefix", "out", "--workers", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.strip() == (
        "error: in.jsonl:2: malformed JSON: Expecting property name enclosed in double quotes "
        "at column 14 (pass --skip-invalid to skip invalid records)")
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_compressed_shards_directory_and_partitions_give_the_same_output(
        tmp_path, preprocess_tool, neox, corpus, capsys):
    """A directory of .jsonl, .jsonl.gz and .jsonl.zst shards, tokenized with 1, 2 and 3
    partitions (plain shards are cut inside), is byte-identical to the plain concatenation."""
    import gzip

    import zstandard

    texts, expected_ids = corpus
    lines = [json.dumps({"text": text}) + "\n" for text in texts]
    shards = tmp_path / "shards"
    shards.mkdir()
    thirds = [lines[:800], lines[800:1600], lines[1600:]]
    _write_jsonl(shards / "00.jsonl", thirds[0])
    with gzip.open(shards / "01.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(thirds[1])
    (shards / "02.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(thirds[2]).encode()))
    _write_jsonl(tmp_path / "all.jsonl", lines)

    status, _, err = _run(preprocess_tool, ["--input", tmp_path / "all.jsonl", "--output-prefix",
                                            tmp_path / "plain", "--workers", 1], capsys)
    assert status == 0, err
    reference = [(tmp_path / f"plain_text_document{ext}").read_bytes() for ext in (".bin", ".idx")]
    _, documents = _read_documents(str(tmp_path / "plain_text_document"))
    assert documents == expected_ids

    for partitions, workers in ((1, 2), (2, 2), (3, 1)):
        prefix = tmp_path / f"p{partitions}"
        status, out, err = _run(preprocess_tool, [
            "--input", shards, "--output-prefix", prefix, "--workers", workers,
            "--partitions", partitions, "--log-interval", 500], capsys)
        assert status == 0, err
        assert [(tmp_path / f"p{partitions}_text_document{ext}").read_bytes()
                for ext in (".bin", ".idx")] == reference
        assert f"documents: {len(texts)} |" in out
        if partitions > 1:
            assert re.search(r"^partition \d/\d: processed documents", err, re.M)
    assert not [name for name in os.listdir(tmp_path) if ".part" in name or ".tmp-" in name]


def test_bad_record_in_a_later_partition_names_its_file_line(tmp_path, preprocess_tool, capsys):
    lines = [json.dumps({"text": f"document {index}"}) + "\n" for index in range(3000)]
    lines[2500] = '{"text": 7}\n'
    _write_jsonl(tmp_path / "in.jsonl", lines)
    status, out, err = _run(preprocess_tool, [
        "--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out",
        "--workers", 2, "--partitions", 2], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'in.jsonl'}:2501: key 'text' holds a number, expected a string "
        "(pass --skip-invalid to skip invalid records)")
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_split_sentences_writes_sentences_as_sequences(tmp_path, preprocess_tool, neox, capsys):
    from megatron_ponder.data.preprocess.sentences import split_sentences

    texts = ["First sentence. Second one!\nStill second? Third.", "Only one", "A.\n\nB. C."]
    _write_jsonl(tmp_path / "in.jsonl", [{"text": text} for text in texts])
    for keep in (False, True):
        prefix = tmp_path / f"keep{int(keep)}"
        status, _, err = _run(preprocess_tool, [
            "--input", tmp_path / "in.jsonl", "--output-prefix", prefix, "--workers", 1,
            "--append-eod", "--split-sentences"] + (["--keep-newlines"] if keep else []),
            capsys)
        assert status == 0, err
        dataset, sequences = _read_documents(f"{prefix}_text_sentence")
        expected = [[neox.tokenize(s) for s in split_sentences(text, keep)] for text in texts]
        for sentences in expected:
            sentences[-1].append(neox.eod)
        assert sequences == [ids for sentences in expected for ids in sentences]
        counts = [0] + [len(sentences) for sentences in expected]
        assert dataset.document_indices.tolist() == numpy.cumsum(counts).tolist()
    assert not (tmp_path / "keep0_text_document.bin").exists()

    status, _, err = _run(preprocess_tool, [
        "--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "nl", "--workers", 1,
        "--keep-newlines"], capsys)
    assert status == 0 and "--keep-newlines has no effect without --split-sentences" in err
