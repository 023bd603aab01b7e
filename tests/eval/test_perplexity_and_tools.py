"""Held-out perplexity on a .bin/.idx dataset, and the two command-line tools end to end on a
tiny model folder (offline: the folder carries a character tokenizer.json)."""

import importlib.util
import json
import math
import os

import numpy
import pytest
import torch
import torch.nn.functional as F

from megatron_ponder.eval.perplexity import held_out_perplexity, token_windows
from megatron_ponder.inference.generation import left_pad
from tests.eval.char_tokenizer import save_char_tokenizer
from tests.inference.helpers import tiny_ponder
from tests.tiny_models import VOCAB

pytestmark = pytest.mark.usefixtures("single_process")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    _, model = tiny_ponder(folder, "llama", 1)
    save_char_tokenizer(folder)
    return str(folder), model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(tmp_path_factory.mktemp("data") / "held_out")
    rng = numpy.random.default_rng(0)
    documents = [rng.integers(1, VOCAB, size=n).tolist() + [0] for n in (9, 3, 14, 5)]
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for document in documents:
        builder.add_document(torch.tensor(document), [len(document)])
    builder.finalize(prefix + ".idx")
    return prefix, [t for d in documents for t in d]


def test_windows_cover_the_stream_once(dataset):
    prefix, stream = dataset
    windows = [w.tolist() for w in token_windows(prefix, seq_length=6)]
    assert all(len(w) == 7 for w in windows[:-1]) and 2 <= len(windows[-1]) <= 7
    # Consecutive windows share one token; the targets are every token after the first.
    assert [t for w in windows for t in w[1:]] == stream[1:]
    assert len(list(token_windows(prefix, seq_length=6, max_sequences=2))) == 2


def test_perplexity_equals_direct_scoring(folder_and_model, dataset):
    _, model = folder_and_model
    prefix, stream = dataset
    result = held_out_perplexity(model, prefix, seq_length=6, batch_size=2,
                                 show_progress=False)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, 6):
            window = torch.tensor(stream[start:start + 7])[None]
            logits = model(window[:, :-1]).logits
            total += F.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
    assert result.tokens == len(stream) - 1
    assert result.nll == pytest.approx(total / (len(stream) - 1), abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.nll))


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}",
                                                  os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_tool_prints_the_models_completions(folder_and_model, capsys):
    folder, model = folder_and_model
    prompts = ["Hello", "Hi there"]
    assert _tool("generate").main(["--hf", folder, "--prompt", prompts[0], "--prompt",
                                   prompts[1], "--max-new-tokens", "6", "--no-eos-stop"]) == 0
    printed = capsys.readouterr().out.splitlines()
    from tests.eval.char_tokenizer import char_tokenizer

    tokenizer = char_tokenizer(folder)
    ids, mask = left_pad([tokenizer.tokenize(p) for p in prompts], tokenizer.eod)
    new = model.generate(ids, attention_mask=mask, max_new_tokens=6)[:, ids.shape[1]:]
    for row, text in enumerate(prompts):
        assert printed[2 * row] == f"=== {text!r}"
        assert printed[2 * row + 1] == text + tokenizer.detokenize(new[row].tolist())


def test_evaluate_tool_writes_table_and_json(folder_and_model, dataset, tmp_path, capsys):
    folder, model = folder_and_model
    prefix, _ = dataset
    output = tmp_path / "results.json"
    assert _tool("evaluate").main([
        "--hf", folder, "--tasks", "piqa", "--limit", "3", "--task-cache",
        str(tmp_path / "tasks"), "--perplexity-data", prefix, "--perplexity-seq-length", "6",
        "--output", str(output)]) == 0
    table = capsys.readouterr().out
    assert "| piqa | validation | acc |" in table
    assert "| held-out (held_out) | - | perplexity |" in table
    report = json.loads(output.read_text())
    rows = {(r["task"], r["metric"]): r for r in report["rows"]}
    assert rows[("piqa", "acc")]["samples"] == 3
    assert rows[("piqa", "acc")]["value"] in (0.0, 1 / 3, 2 / 3, 1.0)
    expected = held_out_perplexity(model, prefix, seq_length=6, show_progress=False)
    assert report["perplexity"]["perplexity"] == pytest.approx(expected.perplexity)
    assert report["mean_jacobi_iterations"] == model.ponder_config.jacobi_iterations


def test_text_perplexity_scores_plain_text_with_the_models_tokenizer(folder_and_model, tmp_path,
                                                                      capsys):
    """--perplexity-text: a .txt file is one document, a .jsonl one per line; each is
    tokenized with the model's tokenizer and ended by its end-of-document token, then scored
    exactly like the same token stream in a .bin/.idx dataset."""
    from megatron_ponder.eval.perplexity import stream_windows, text_documents, \
        windows_perplexity
    from megatron_ponder.hf.loading import load_tokenizer

    folder, model = folder_and_model
    tokenizer = load_tokenizer(folder)
    (tmp_path / "a.txt").write_text("abc abd\nbca")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "cab"}) + "\n\n"
                                      + json.dumps({"text": "bad cab"}) + "\n")
    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    documents = list(text_documents(files, tokenizer))
    assert documents == [list(tokenizer.tokenize(text)) + [tokenizer.eod]
                         for text in ("abc abd\nbca", "cab", "bad cab")]
    expected = windows_perplexity(model, stream_windows(documents, 6), "x", 6,
                                  show_progress=False)
    output = tmp_path / "results.json"
    assert _tool("evaluate").main(["--hf", folder, "--tasks", "", "--perplexity-text", *files,
                                   "--perplexity-seq-length", "6", "--output",
                                   str(output)]) == 0
    assert "| text (a.txt,b.jsonl) | - | loss |" in capsys.readouterr().out
    report = json.loads(output.read_text())["text_perplexity"]
    assert report["nll"] == pytest.approx(expected.nll)
    assert report["tokens"] == sum(len(d) for d in documents) - 1
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not a JSON object"):
        list(text_documents([str(tmp_path / "bad.jsonl")], tokenizer))
    with pytest.raises(FileNotFoundError, match="--perplexity-text .*missing.txt"):
        list(text_documents([str(tmp_path / "missing.txt")], tokenizer))
