"""tools/reproduce.py and tools/train_tokenizer.py: bad input gets one clear line and a non-zero
exit (the end-to-end run is tests/reproduction/test_driver.py)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import TOOLS_DIR


def _run(tool, *args):
    return subprocess.run([sys.executable, os.path.join(TOOLS_DIR, tool), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,code,message", [
    (["--arms", "vanila"], 2, "error: unknown arm(s) vanila; known: vanilla"),
    (["--eval-text", "/no/such/file.txt"], 2, "error: --eval-text /no/such/file.txt: no such"),
    (["--scale", "gpu-70m"], 1, "error: --scale gpu-70m needs --data-path"),
    (["--jobs", "2", "--nproc-per-node", "2"], 2, "error: --jobs must be >= 1, and 1 with"),
    (["--lr", "fast"], 2, "error: --lr takes numbers or 'best', got fast"),
    (["--lr", "0"], 2, "error: --lr must be positive, got 0"),
    (["--lr", "best", "--arms", "vanilla-seed2", "--output-dir", "/nonexistent/dir"], 2,
     "error: --lr best: no finished run of vanilla in /nonexistent/dir"),
    (["--lr", "best", "--arms", "vanilla-continued"], 2,
     "error: --lr best does not choose rates for continued arms (vanilla-continued)"),
])
def test_reproduce_rejects_bad_input_in_one_line(args, code, message):
    done = _run("reproduce.py", *args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_reproduce_help_lists_the_arms_and_scales():
    done = _run("reproduce.py", "--help")
    assert done.returncode == 0
    for word in ("ponderlm2-k1-continued", "vanilla-compute-matched", "gpu-70m", "paper"):
        assert word in done.stdout


def test_train_tokenizer(tmp_path):
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"line {i} of some text"})
                                for i in range(50)))
    output = tmp_path / "bpe" / "tokenizer.json"
    done = _run("train_tokenizer.py", "--input", str(corpus), "--vocab-size", "270",
                "--output", str(output))
    assert done.returncode == 0, done.stderr
    vocab = json.loads(output.read_text())["model"]["vocab"]
    assert len(vocab) == 270 and vocab["<|endoftext|>"] == 0
    missing = _run("train_tokenizer.py", "--input", str(tmp_path / "nope.jsonl"),
                   "--output", str(output))
    assert missing.returncode == 1 and "no such file" in missing.stderr
