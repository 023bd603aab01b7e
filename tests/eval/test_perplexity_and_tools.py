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
from megatron_ponder.hf import from_pretrained, load_training_model
from megatron_ponder.hf.loading import load_tokenizer
from tests.eval.char_tokenizer import save_char_tokenizer
from tests.tiny_models import VOCAB, save_tiny_hf

pytestmark = pytest.mark.usefixtures("single_process")
J = 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    """A tiny random Llama folder made a PonderLM-2 (K=1, J=3) with the character tokenizer,
    and its transformers-native model."""
    folder = tmp_path_factory.mktemp("llama")
    save_tiny_hf(folder, "llama", ponder_fields=dict(
        recurrent_model=True, num_latent_thoughts=1, num_jacobi_iterations=J,
        scale_embeds=True, interpolation=False))
    save_char_tokenizer(folder)
    return str(folder), from_pretrained(str(folder))


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


def _training_nll(reference, stream, seq_length):
    """Mean loss of the training model's forward over the stream's windows of ``seq_length +
    1`` tokens overlapping by one (each scored on its own, the last one shorter)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, seq_length):
            window = torch.tensor(stream[start:start + seq_length + 1])[None]
            logits = reference(window[:, :-1])
            total += F.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
    return total / (len(stream) - 1)


@pytest.mark.parametrize("jacobi_iterations", [None, 1])
def test_perplexity_equals_the_training_models_loss(folder_and_model, dataset,
                                                    jacobi_iterations):
    """The windows batched (the last one shorter, right-padded) score as the training
    forward scores each alone; the Jacobi setting is the model's."""
    folder, model = folder_and_model
    override = {} if jacobi_iterations is None else {"jacobi_iterations": jacobi_iterations}
    if override:
        model = from_pretrained(folder, **override)
    prefix, stream = dataset
    result = held_out_perplexity(model, prefix, seq_length=6, batch_size=2,
                                 show_progress=False)
    expected = _training_nll(load_training_model(folder, **override), stream, 6)
    assert result.tokens == len(stream) - 1
    assert result.nll == pytest.approx(expected, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.nll))
    if override:  # another J, another loss: the setting took effect
        default = held_out_perplexity(folder_and_model[1], prefix, seq_length=6,
                                      show_progress=False)
        assert default.nll != pytest.approx(result.nll, abs=1e-5)


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}",
                                                  os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_left_pad():
    from megatron_ponder.hf.prompts import left_pad

    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_generate_tool_prints_greedy_completions(folder_and_model, capsys):
    """Prompts of different lengths in one left-padded batch, decoded with the KV cache,
    equal greedy decoding of each prompt alone by full forwards of the training model (with
    enough Jacobi passes to converge: K * length + 1)."""
    folder, _ = folder_and_model
    prompts, new_tokens = ["Hello", "Hi there"], 6
    exact = 1 * (max(map(len, prompts)) + new_tokens) + 1
    assert _tool("generate").main([
        "--hf", folder, "--prompt", prompts[0], "--prompt", prompts[1], "--max-new-tokens",
        str(new_tokens), "--no-eos-stop", "--jacobi-iterations", str(exact)]) == 0
    printed = capsys.readouterr().out.splitlines()
    tokenizer = load_tokenizer(folder)
    reference = load_training_model(folder, jacobi_iterations=exact)
    for row, text in enumerate(prompts):
        ids = tokenizer.tokenize(text)
        with torch.no_grad():
            for _ in range(new_tokens):
                ids.append(int(reference(torch.tensor([ids]))[0, -1].argmax()))
        assert printed[2 * row] == f"=== {text!r}"
        assert printed[2 * row + 1] == text + tokenizer.detokenize(ids[len(text):])


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
    assert report["mean_jacobi_iterations"] == model.config.num_jacobi_iterations == J


def test_text_perplexity_scores_plain_text_with_the_models_tokenizer(folder_and_model, tmp_path,
                                                                      capsys):
    """--perplexity-text: a .txt file is one document, a .jsonl one per line; each is
    tokenized with the model's tokenizer and ended by its end-of-document token, then scored
    exactly like the same token stream in a .bin/.idx dataset."""
    from megatron_ponder.eval.perplexity import stream_windows, text_documents, \
        windows_perplexity

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


@pytest.mark.parametrize("tool", ["generate", "evaluate"])
def test_tools_refuse_a_malformed_jacobi_flag(tool, capsys):
    base = ["--hf", "unused", "--prompt", "a"] if tool == "generate" else ["--hf", "unused"]
    with pytest.raises(SystemExit):
        _tool(tool).parse_args(base + ["--jacobi-iterations", "three"])
    assert "expected an int >= 0 or 'adaptive', got 'three'" in capsys.readouterr().err
    args = _tool(tool).parse_args(base + ["--jacobi-iterations", "adaptive",
                                          "--jacobi-tolerance", "1e-3"])
    assert (args.jacobi_iterations, args.jacobi_tolerance) == ("adaptive", 1e-3)
    assert _tool(tool).parse_args(base + ["--jacobi-iterations", "2"]).jacobi_iterations == 2
