"""Every Megatron-LM tokenizer type from the same flags in training (pretrain_ponder.py's
arguments) and in tools/preprocess_data.py: the same tokenizer, the same ids on disk, and one
clear line for a flag combination that cannot work."""

import json
import os
import subprocess
import sys

import pytest

from megatron_ponder.tokenizer import HuggingFaceTokenizer, MegatronCoreTokenizer, \
    TokenizerSpec, build_tokenizer
from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.resolve import ConfigError, resolve_config
from tests.tools.conftest import REPO_ROOT, load_tool

from .assets import GPT2_MERGES, TIKTOKEN_MERGES, write_gpt2_files, write_hugging_face_folder, \
    write_sentencepiece_model, write_tiktoken_json

TEXTS = ["hello world the quick brown fox", "the lazy dog says hello"]
TIKTOKEN_VOCAB = 1000 + 256 + TIKTOKEN_MERGES  # megatron-core's default special ids + ranks
TIKTOKEN_FIRST = ["</s>", "<unk>", "<s>", "<mask>", "<pad>", "<cls>", "<sep>"]

# type: (flags, from megatron-core, vocab size, eod, pad, texts); {x} are asset paths.
CASES = {
    "GPT2BPETokenizer": (
        ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "{vocab}", "--merge-file",
         "{merges}"], False, 256 + len(GPT2_MERGES) + 1, 256 + len(GPT2_MERGES), -1, TEXTS),
    "HuggingFaceTokenizer": (
        ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "{hf_folder}"],
        True, 50277, 0, 1, TEXTS),
    "SentencePieceTokenizer": (
        ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "{sentencepiece}"],
        True, 64, 2, -1, TEXTS),
    "GPTSentencePieceTokenizer": (
        ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model",
         "{sentencepiece}"], True, 64, 2, -1, TEXTS),
    "Llama2Tokenizer": (
        ["--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", "{sentencepiece}"],
        True, 64, 2, -1, TEXTS),
    "TikTokenizer": (
        ["--tokenizer-type", "TikTokenizer", "--tokenizer-model", "{tiktoken}", "--vocab-size",
         str(TIKTOKEN_VOCAB), "--tiktoken-pattern", "v1"], True, TIKTOKEN_VOCAB, 2, 4, TEXTS),
    "TikTokenizer-own-special-tokens": (
        ["--tokenizer-type", "TikTokenizer", "--tokenizer-model", "{tiktoken}", "--vocab-size",
         str(10 + 256 + TIKTOKEN_MERGES), "--tiktoken-num-special-tokens", "10",
         "--tiktoken-special-tokens"] + TIKTOKEN_FIRST,
        True, 10 + 256 + TIKTOKEN_MERGES, 0, 4, TEXTS),
    "NullTokenizer": (
        ["--tokenizer-type", "NullTokenizer", "--vocab-size", "500"], True, 501, 500, -1,
        ["5 17 3", "499 0"]),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tokenizer_assets"))
    _, vocab, merges = write_gpt2_files(folder)
    return {"vocab": vocab, "merges": merges, "sentencepiece": write_sentencepiece_model(folder),
            "tiktoken": write_tiktoken_json(folder),
            "hf_folder": write_hugging_face_folder(os.path.join(folder, "neox"))}


@pytest.fixture(scope="module")
def preprocess_tool():
    return load_tool("preprocess_data")


def _flags(flags, assets):
    return [flag.format(**assets) for flag in flags]


def _training_tokenizer(flags):
    """What pretrain_ponder.py builds: parsed and validated flags -> tokenizer."""
    config = resolve_config(parse_args(["--mock-data"] + flags), 1)
    return build_tokenizer(TokenizerSpec.from_flags(config.tokenizer))


@pytest.mark.parametrize("case", list(CASES))
def test_training_and_preprocessing_build_the_same_tokenizer(case, assets, preprocess_tool,
                                                              tmp_path, capsys):
    flag_templates, from_core, vocab_size, eod, pad, texts = CASES[case]
    flags = _flags(flag_templates, assets)
    tokenizer = _training_tokenizer(flags)

    parsed = preprocess_tool.build_parser().parse_args(
        ["--input", "in.jsonl", "--output-prefix", "out"] + flags)
    spec = preprocess_tool.config_from_args(parsed).tokenizer
    assert spec == TokenizerSpec.from_flags(parse_args(["--mock-data"] + flags).tokenizer)

    expected_class = MegatronCoreTokenizer if from_core else HuggingFaceTokenizer
    assert isinstance(tokenizer, expected_class)
    if from_core:
        assert type(tokenizer.core).__module__.startswith("megatron.core.tokenizers.")
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad) == (vocab_size, eod, pad)
    for text in texts:
        ids = tokenizer.tokenize(text)
        assert ids and max(ids) < vocab_size and eod not in ids
        assert tokenizer.detokenize(ids) == text

    # The tool's output holds exactly these ids, each document ended by EOD.
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    status = preprocess_tool.main(["--input", str(tmp_path / "in.jsonl"), "--output-prefix",
                                   str(tmp_path / "out"), "--workers", "1", "--append-eod"]
                                  + flags)
    assert status == 0, capsys.readouterr().err
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert [dataset[index].tolist() for index in range(len(dataset))] == [
        tokenizer.tokenize(text) + [eod] for text in texts]


def test_the_sentencepiece_types_encode_alike_without_bos(assets):
    """megatron-core builds all three from the same SentencePiece tokenizer: no BOS is added
    (Megatron-LM's --legacy-tokenizer Llama2Tokenizer added one)."""
    ids = [build_tokenizer(TokenizerSpec(tokenizer_type=kind,
                                         tokenizer_model=assets["sentencepiece"])).tokenize(
        TEXTS[0]) for kind in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                               "Llama2Tokenizer")]
    assert ids[0] == ids[1] == ids[2] and 1 not in ids[0]  # 1 = <s>


BAD_FLAGS = [
    (["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "{vocab}"],
     "GPT2BPETokenizer needs both --vocab-file and --merge-file"),
    (["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "{vocab}", "--merge-file",
      "{missing}"], "GPT2BPETokenizer: --merge-file {missing} not found"),
    (["--tokenizer-type", "SentencePieceTokenizer"],
     "SentencePieceTokenizer needs --tokenizer-model (a SentencePiece .model file)"),
    (["--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", "{missing}"],
     "Llama2Tokenizer: --tokenizer-model {missing} not found"),
    (["--tokenizer-type", "TikTokenizer"],
     "TikTokenizer needs --tokenizer-model (a tiktoken JSON vocabulary)"),
    (["--tokenizer-type", "TikTokenizer", "--tokenizer-model", "{tiktoken}", "--vocab-size",
      "900"], "--vocab-size (900) counts the --tiktoken-num-special-tokens (1000)"),
    (["--tokenizer-type", "NullTokenizer"], "NullTokenizer needs --vocab-size"),
    (["--tokenizer-special-tokens", "<think>"], "--tokenizer-special-tokens applies to "
     "megatron-core's tokenizers"),  # the default GPT-NeoX tokenizer is read by this project
    (["--tokenizer-type", "GPT2BPETokenizer", "--tokenizer-hf-include-special-tokens"],
     "--tokenizer-hf-include-special-tokens applies to megatron-core's tokenizers"),
]


@pytest.mark.parametrize("flag_templates, message", BAD_FLAGS)
def test_bad_flags_are_one_line_in_training_and_preprocessing(flag_templates, message, assets,
                                                              preprocess_tool, tmp_path, capsys):
    values = dict(assets, missing=str(tmp_path / "missing.file"))
    flags = [flag.format(**values) for flag in flag_templates]
    message = message.format(**values)
    with pytest.raises(ConfigError) as raised:
        resolve_config(parse_args(["--mock-data"] + flags), 1)
    assert message in str(raised.value) and "\n" not in str(raised.value)

    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    status = preprocess_tool.main(["--input", str(tmp_path / "in.jsonl"), "--output-prefix",
                                   str(tmp_path / "out"), "--workers", "1"] + flags)
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_file_that_does_not_load_is_one_line(assets, preprocess_tool, tmp_path, capsys):
    """Flags that pass the checks but a vocabulary smaller than --vocab-size says (here the
    default 131072): the load fails with one line naming the file, in training already while
    the configuration is resolved (before any process group or model)."""
    flags = ["--tokenizer-type", "TikTokenizer", "--tokenizer-model", assets["tiktoken"]]
    with pytest.raises(ConfigError) as raised:
        _training_tokenizer(flags)
    prefix = "invalid configuration: tokenizer: "
    assert str(raised.value).startswith(prefix) and "\n" not in str(raised.value)
    message = str(raised.value)[len(prefix):]
    assert message.startswith(f"cannot load TikTokenizer from {assets['tiktoken']}: ")

    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    status = preprocess_tool.main(["--input", str(tmp_path / "in.jsonl"), "--output-prefix",
                                   str(tmp_path / "out"), "--workers", "1"] + flags)
    assert status == 1
    assert capsys.readouterr().err == f"error: {message}\n"


def test_pretrain_ponder_prints_one_line_for_bad_tokenizer_flags(assets):
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "pretrain_ponder.py"), "--mock-data",
         "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", assets["vocab"]],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: invalid configuration: GPT2BPETokenizer needs both --vocab-file and "
        "--merge-file")
    assert "Traceback" not in completed.stderr


def test_tokenizer_spec_mirrors_the_training_flags():
    """TokenizerSpec (torch-free, for preprocessing workers) has the training flags' fields,
    defaults included."""
    import dataclasses

    from megatron_ponder.training.config import TokenizerConfig

    flags = {field.name: field.default for field in dataclasses.fields(TokenizerConfig)}
    for field in dataclasses.fields(TokenizerSpec):
        assert flags[field.name] == field.default, field.name
    assert set(flags) - {field.name for field in dataclasses.fields(TokenizerSpec)} == {
        "make_vocab_size_divisible_by"}


def test_megatron_lms_other_tokenizer_flags_reach_megatron_core(assets):
    from megatron_ponder.tokenizer.megatron_core import _megatron_lm_arguments

    flags = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
             assets["hf_folder"]]
    extra = ["--tokenizer-special-tokens", "<think>", "</think>", "--tokenizer-hf-use-fast",
             "--trust-remote-code", "--tokenizer-hf-include-special-tokens",
             "--tokenizer-sentencepiece-legacy"]
    config = resolve_config(parse_args(["--mock-data"] + flags + extra), 1)
    arguments = _megatron_lm_arguments(TokenizerSpec.from_flags(config.tokenizer))
    assert arguments.tokenizer_special_tokens == ["<think>", "</think>"]
    assert arguments.tokenizer_hf_use_fast and arguments.trust_remote_code
    assert arguments.tokenizer_hf_include_special_tokens
    assert arguments.tokenizer_sentencepiece_legacy
    plain = _training_tokenizer(flags)
    added = _training_tokenizer(flags + ["--tokenizer-special-tokens", "<think>"])
    assert added.vocab_size == plain.vocab_size + 1
    assert added.tokenize("<think>") == [plain.vocab_size]
