"""A tiny exported model, tokenizer and local lm-eval tasks shared by the lm-eval tests."""

import json
import os
import textwrap
from typing import Optional

import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.model import build_model
from tests.eval.char_tokenizer import save_char_tokenizer

VOCAB = 97  # the character tokenizer's
TASKS = ["tiny_mc", "tiny_cloze", "tiny_text"]
# Multiple choice with 2-4 choices; gold answers chosen so that accuracy is neither 0 nor 1 by
# construction (the model is random).
CHOICE_DOCS = [
    {"question": "2 + 2", "choices": ["4", "5", "22"], "answer": 0},
    {"question": "capital of France", "choices": ["Rome", "Paris"], "answer": 1},
    {"question": "color of the sky", "choices": ["blue", "green", "red", "gray"], "answer": 0},
    {"question": "opposite of up", "choices": ["left", "down"], "answer": 1},
    {"question": "a prime", "choices": ["9", "15", "7"], "answer": 2},
    {"question": "first letter", "choices": ["a", "z"], "answer": 0},
]
CLOZE_DOCS = [
    {"context": "The cat sat on the", "target": " mat"},
    {"context": "One, two, three,", "target": " four"},
    {"context": "abcdefg", "target": "h"},
    {"context": "Once upon a", "target": " time"},
]
TEXT_DOCS = [{"text": "Rolling windows cover every token exactly once."},
             {"text": "A second, shorter document."},
             {"text": "x"}]


def export_tiny(folder, arch: str = "gpt_neox", k: int = 1, seed: int = 0,
                eod_like: Optional[int] = None):
    """A random tiny PonderLM-2 (our megatron model, eval mode) and its export to ``folder``
    with the character tokenizer (tokenizer.json + tokenizer_config.json). ``eod_like``: a
    token id whose output row, scaled up, becomes the end-of-text token's, so that greedy
    generation ends where it would have picked that token (random weights never pick id 0)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, num_layers=2, hidden_size=32,
                                    num_attention_heads=4, vocab_size=VOCAB),
                        PonderConfig(num_latent_thoughts=k, jacobi_iterations=2)).eval()
    with torch.no_grad():  # a sharper random model: log-likelihoods far from uniform
        for param in model.parameters():
            param.mul_(3.0)
        if eod_like is not None:
            head = model.output_layer.weight
            head[0] = 1.05 * head[eod_like]
    tokenizer_dir = f"{folder}_tokenizer"
    os.makedirs(tokenizer_dir, exist_ok=True)
    tokenizer = save_char_tokenizer(tokenizer_dir)
    save_pretrained(model, str(folder), tokenizer_file=tokenizer)
    return model, str(folder)


def _jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def write_tasks(folder) -> str:
    """tiny_mc (multiple_choice: acc, acc_norm), tiny_cloze (loglikelihood: perplexity, acc)
    and tiny_text (loglikelihood_rolling: word/byte perplexity) as YAMLs in ``folder``."""
    mc = _jsonl(folder / "mc.jsonl", CHOICE_DOCS)
    cloze = _jsonl(folder / "cloze.jsonl", CLOZE_DOCS)
    text = _jsonl(folder / "text.jsonl", TEXT_DOCS)

    def task(name, data, body):
        (folder / f"{name}.yaml").write_text(textwrap.dedent(f"""\
            task: {name}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {data}
            test_split: test
            """) + textwrap.dedent(body))

    task("tiny_mc", mc, """\
        output_type: multiple_choice
        doc_to_text: "Q: {{question}}\\nA:"
        doc_to_choice: "{{choices}}"
        doc_to_target: answer
        metric_list:
          - metric: acc
          - metric: acc_norm
        """)
    task("tiny_cloze", cloze, """\
        output_type: loglikelihood
        doc_to_text: "{{context}}"
        doc_to_target: "{{target}}"
        metric_list:
          - metric: perplexity
          - metric: acc
        """)
    task("tiny_text", text, """\
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{text}}"
        metric_list:
          - metric: word_perplexity
          - metric: byte_perplexity
          - metric: bits_per_byte
        """)
    return str(folder)


def metrics(results: dict) -> dict:
    """{(task, metric): value} of an lm-eval result dict (stderr and bookkeeping left out)."""
    out = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, comma, _ = key.partition(",")
            if comma and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                out[(task, metric)] = float(value)
    return out


def assert_same_scores(ours: dict, theirs: dict, atol: float = 1e-4) -> None:
    """Equal metric sets; accuracies exactly equal, every other metric within ``atol``
    relative to its size."""
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        if key[1].startswith("acc"):
            assert ours[key] == theirs[key], key
        else:
            assert abs(ours[key] - theirs[key]) <= atol * max(1.0, abs(ours[key])), \
                (key, ours[key], theirs[key])
