"""The reproduction end to end on a tiny corpus: a BPE trained on it, three arms (one
continuing another) trained as subprocesses, evaluated on the validation split and held-out
text, reported; a second run resumes instead of retraining."""

import dataclasses
import json
import os
import random

import pytest

from megatron_ponder.data.preprocess import PreprocessConfig, dataset_prefix, run_preprocessing
from megatron_ponder.reproduction.driver import Reproduction
from megatron_ponder.reproduction.evaluate import text_documents
from megatron_ponder.reproduction.recipes import RECIPES, select_arms
from megatron_ponder.reproduction.runner import Setup
from megatron_ponder.tokenizer import TokenizerSpec, build_tokenizer
from megatron_ponder.tokenizer.train_bpe import EOD_TOKEN, iter_jsonl_texts, \
    train_byte_level_bpe

WORDS = "the a cat dog sat ran on under mat log red blue big small quickly slowly".split()


def _write_corpus(directory, name, documents, seed):
    rng = random.Random(seed)
    path = os.path.join(directory, f"{name}.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(documents):
            text = ". ".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(4))
            handle.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("corpus"))
    train = _write_corpus(directory, "train", 60, seed=1)
    valid = _write_corpus(directory, "valid", 6, seed=2)
    tokenizer_path = os.path.join(directory, "bpe", "tokenizer.json")
    train_byte_level_bpe(iter_jsonl_texts([train]), 300, tokenizer_path)
    prefixes = {}
    for name, path in (("train", train), ("valid", valid)):
        prefix = os.path.join(directory, name)
        run_preprocessing(PreprocessConfig(
            inputs=[path], output_prefix=prefix, append_eod=True,
            tokenizer=TokenizerSpec(tokenizer_model=tokenizer_path)), log=open(os.devnull, "w"))
        prefixes[name] = dataset_prefix(prefix, "text")
    held_out = os.path.join(directory, "held_out.txt")
    with open(held_out, "w", encoding="utf-8") as handle:
        handle.write("a big red dog ran quickly under the small blue mat. " * 8)
    return dict(tokenizer=tokenizer_path, held_out=held_out, **prefixes)


def test_trained_bpe_is_byte_level_with_eod_first(corpus):
    tokenizer = build_tokenizer(TokenizerSpec(tokenizer_model=corpus["tokenizer"]))
    assert tokenizer.vocab_size == 300
    assert tokenizer.eod == 0 and tokenizer.detokenize([0]) in ("", EOD_TOKEN)
    text = "the cat sat — ünïcode ☃ survives"
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
    assert len(tokenizer.tokenize("the cat sat on the mat")) < len("the cat sat on the mat")


def test_bpe_rejects_a_vocabulary_without_room_for_merges(tmp_path):
    with pytest.raises(ValueError, match="vocab_size >= 258"):
        train_byte_level_bpe(["abc"], 100, str(tmp_path / "tokenizer.json"))


def test_eval_text_formats(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("one document\n\nstill one")
    assert list(text_documents(str(plain))) == ["one document\n\nstill one"]
    lines = tmp_path / "docs.jsonl"
    lines.write_text('{"text": "first"}\n\n{"text": "second"}\n')
    assert list(text_documents(str(lines))) == ["first", "second"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        list(text_documents(str(broken)))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        list(text_documents(str(binary)))


@pytest.mark.slow  # 85 s on 2 cores; `make test-slow`
def test_reproduction_end_to_end_and_resume(corpus, tmp_path):
    recipe = dataclasses.replace(
        RECIPES["small"], name="test", train_iters=2, eval_points=2, eval_iters=1,
        seq_length=16, micro_batch_size=2, global_batch_size=2, checkpoints_per_arm=1,
        model_flags=("--model-preset", "tiny", "--hidden-size", "32",
                     "--num-attention-heads", "2"), num_layers=2)
    data_flags = ["--train-data-path", corpus["train"], "--valid-data-path", corpus["valid"],
                  "--tokenizer-model", corpus["tokenizer"]]
    setup = Setup(recipe=recipe, output_dir=str(tmp_path), data_flags=data_flags, jobs=2,
                  cpu_threads=1)
    arms = select_arms(recipe, ["ponderlm2-k1-continued", "pause-k1"])
    messages = []
    reproduction = Reproduction(setup, arms, corpus["valid"], corpus["held_out"],
                                log=messages.append)
    results = {r["arm"]: r for r in reproduction.run()}
    assert set(results) == {"vanilla", "pause-k1", "ponderlm2-k1-continued"}
    vanilla, continued = results["vanilla"], results["ponderlm2-k1-continued"]
    assert vanilla["training_tokens"] == 2 * 2 * 16
    assert continued["training_tokens"] == vanilla["training_tokens"] + 1 * 2 * 16
    assert continued["training_flops"] > vanilla["training_flops"]
    assert results["pause-k1"]["parameters"] == vanilla["parameters"] + 32
    for result in results.values():
        assert 0 < result["valid_loss"] < 10 and 0 < result["heldout_loss"] < 10
        assert [point["iteration"] for point in result["curve"]] == \
            ([0, 1] if result["arm"] == "ponderlm2-k1-continued" else [0, 1, 2])
        assert result["train_seconds"] > 0
    assert continued["curve"][0]["tokens"] == vanilla["training_tokens"]
    log = open(tmp_path / "ponderlm2-k1-continued" / "train.log").read()
    assert "--finetune" in log and "finetune: starting at iteration 0" in log
    table = reproduction.write_report()
    assert "ponderlm2-k1-continued" in table
    assert os.path.isfile(tmp_path / "valid_loss_vs_flops.png")

    # Again: nothing is retrained; an arm trained but not evaluated is only evaluated.
    os.remove(tmp_path / "pause-k1" / "result.json")
    messages.clear()
    again = Reproduction(setup, arms, corpus["valid"], corpus["held_out"], log=messages.append)
    again.run()
    assert not [m for m in messages if "training" in m]
    assert any(m.startswith("[pause-k1] done") for m in messages)
