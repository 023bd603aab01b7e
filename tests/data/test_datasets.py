"""build_datasets: megatron-core GPT datasets behind Megatron-LM's data flags.

Documents are written with megatron-core's own IndexedDatasetBuilder and carry recognisable
ids (document d of dataset s holds ``s * 1000 + d`` repeated, then EOD), so every sample can
be traced back to the documents it came from.
"""

import collections
import os
import re
import shutil

import numpy
import pytest

from megatron_ponder.data import (DataConfig, DataConfigError, build_datasets,
                                  check_data_files, parse_blend)
from megatron_ponder.tokenizer import NULL_TOKENIZER, TokenizerSpec, build_tokenizer

EOD = 5000


def null_tokenizer(vocab_size):
    return build_tokenizer(TokenizerSpec(tokenizer_type=NULL_TOKENIZER, vocab_size=vocab_size))


TOKENIZER = null_tokenizer(EOD)  # ids 0..4999, EOD 5000


def _write_dataset(prefix, dataset_index, num_documents=60, rng_seed=0):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = numpy.random.default_rng(rng_seed + dataset_index)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.uint16)
    for document in range(num_documents):
        length = int(rng.integers(5, 40))
        ids = numpy.array([dataset_index * 1000 + document] * length + [EOD], dtype=numpy.uint16)
        builder.add_document(ids, [ids.size])
    builder.finalize(f"{prefix}.idx")
    return prefix


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return [_write_dataset(str(root / f"set{index}"), index + 1) for index in range(2)]


def _documents_of(sample):
    """The document ids a sample's tokens come from (EOD excluded)."""
    tokens = sample["tokens"].tolist() + sample["labels"].tolist()[-1:]
    return {token for token in tokens if token != EOD}


def test_single_prefix_is_split_by_documents(prefixes):
    config = DataConfig(data_path=[prefixes[0]], split="80,20,0", seq_length=16, num_workers=0)
    train, valid, test = build_datasets(config, TOKENIZER, train_samples=50, valid_samples=10)
    assert test is None
    assert len(train) >= 50 and len(valid) >= 10
    train_documents = set().union(*(_documents_of(train[i]) for i in range(len(train))))
    valid_documents = set().union(*(_documents_of(valid[i]) for i in range(len(valid))))
    # 60 documents: the first 48 train, the last 12 validate.
    assert train_documents == {1000 + d for d in range(48)}
    assert valid_documents <= {1000 + d for d in range(48, 60)}


def test_samples_are_shifted_windows_of_the_document_stream(prefixes):
    config = DataConfig(data_path=[prefixes[0]], split="1,0,0", seq_length=32, num_workers=0)
    train, _, _ = build_datasets(config, TOKENIZER, train_samples=20, valid_samples=0)
    for index in range(20):
        sample = train[index]
        assert sample["tokens"].shape == sample["labels"].shape == (32,)
        assert sample["tokens"][1:].tolist() == sample["labels"][:-1].tolist()
        assert sample["position_ids"].tolist() == list(range(32))
        assert sample["loss_mask"].tolist() == [1.0] * 32
        assert "attention_mask" not in sample  # off by default: the model builds its own
        # A new document starts only right after an EOD (megatron-core keeps EOD in the stream).
        tokens = sample["tokens"].tolist()
        for previous, current in zip(tokens, tokens[1:]):
            assert current == previous or previous == EOD or current == EOD


def test_eod_handling_flags_reach_the_samples(prefixes):
    config = DataConfig(data_path=[prefixes[0]], split="1,0,0", seq_length=64, num_workers=0,
                        eod_mask_loss=True, reset_position_ids=True, create_attention_mask=True)
    train, _, _ = build_datasets(config, TOKENIZER, train_samples=5, valid_samples=0)
    sample = train[0]
    tokens = sample["tokens"]
    assert EOD in tokens.tolist()
    assert (sample["loss_mask"][tokens == EOD] == 0).all()
    assert (sample["loss_mask"][tokens != EOD] == 1).all()
    first_eod = tokens.tolist().index(EOD)
    assert sample["position_ids"][first_eod + 1].item() == 0
    assert sample["attention_mask"].shape == (1, 64, 64)


def test_blending_two_datasets_by_weight(prefixes):
    config = DataConfig(data_path=["30", prefixes[0], "70", prefixes[1]], split="1,0,0",
                        seq_length=16, num_workers=0)
    train, _, _ = build_datasets(config, TOKENIZER, train_samples=1000, valid_samples=0)
    assert len(train) == 1000
    counts = collections.Counter(int(train[i]["dataset_id"]) for i in range(1000))
    assert abs(counts[0] - 300) <= 1 and abs(counts[1] - 700) <= 1
    for index in range(0, 1000, 37):
        sample = train[index]
        owner = int(sample["dataset_id"]) + 1
        assert all(token // 1000 == owner for token in _documents_of(sample))


def test_blending_without_weights_follows_dataset_sizes(tmp_path, prefixes):
    small = _write_dataset(str(tmp_path / "small"), 3, num_documents=20)
    config = DataConfig(data_path=[prefixes[0], small], split="1,0,0", seq_length=16,
                        num_workers=0)
    train, _, _ = build_datasets(config, TOKENIZER, train_samples=100, valid_samples=0)
    counts = collections.Counter(int(train[i]["dataset_id"]) for i in range(len(train)))
    assert counts[0] > 2 * counts[1] > 0


def test_separate_train_and_valid_paths(prefixes):
    config = DataConfig(train_data_path=[prefixes[0]], valid_data_path=[prefixes[1]],
                        seq_length=16, num_workers=0)
    train, valid, test = build_datasets(config, TOKENIZER, train_samples=30, valid_samples=30)
    assert test is None
    assert {token // 1000 for i in range(30) for token in _documents_of(train[i])} == {1}
    assert {token // 1000 for i in range(30) for token in _documents_of(valid[i])} == {2}


def test_the_seed_decides_the_shuffle(prefixes, tmp_path):
    def first_tokens(seed):
        config = DataConfig(data_path=[prefixes[0]], split="1,0,0", seq_length=16, seed=seed,
                            num_workers=0, data_cache_path=str(tmp_path / "cache"))
        train, _, _ = build_datasets(config, TOKENIZER, train_samples=10, valid_samples=0)
        return [train[i]["tokens"].tolist() for i in range(10)]

    assert first_tokens(1) == first_tokens(1)  # the second call loads the cached indices
    assert first_tokens(1) != first_tokens(2)
    assert len(list((tmp_path / "cache").glob("*GPTDataset-train-shuffle_index.npy"))) == 2


def test_requests_beyond_one_epoch_repeat_the_data(prefixes):
    config = DataConfig(data_path=[prefixes[0]], split="1,0,0", seq_length=64, num_workers=0)
    train, _, _ = build_datasets(config, TOKENIZER, train_samples=200, valid_samples=0)
    assert len(train) >= 200  # 60 short documents hold fewer than 30 samples of 64 tokens


def test_mock_data_uses_megatron_mock_dataset():
    config = DataConfig(mock_data=True, seq_length=32, num_workers=0)
    train, valid, _ = build_datasets(config, null_tokenizer(100), train_samples=8,
                                     valid_samples=4)
    assert type(train).__name__ == "MockGPTDataset"
    sample = train[0]
    assert sample["tokens"].shape == (32,)
    assert int(sample["tokens"].max()) <= 100


def test_gpt_neox_tokenizer_is_accepted_by_megatron(prefixes):
    from megatron_ponder.tokenizer import build_tokenizer

    config = DataConfig(data_path=[prefixes[0]], split="1,0,0", seq_length=16, num_workers=0)
    train, _, _ = build_datasets(config, build_tokenizer(), train_samples=4, valid_samples=0)
    assert train[0]["tokens"].shape == (16,)


def test_missing_dataset_files_are_named(tmp_path):
    config = DataConfig(data_path=[str(tmp_path / "nothing_text_document")], seq_length=16)
    with pytest.raises(DataConfigError, match=r"nothing_text_document.*missing .*\.bin"):
        build_datasets(config, TOKENIZER, train_samples=1, valid_samples=1)


def _copy_dataset(prefix, target):
    for ext in (".bin", ".idx"):
        shutil.copyfile(prefix + ext, target + ext)
    return target


@pytest.mark.parametrize("damage, message", [
    ("truncate-bin", r"\.bin has 100 bytes but .*\.idx describes \d+: the \.bin and \.idx "
                     r"files do not belong together"),
    ("other-idx", r"\.bin has \d+ bytes but .*\.idx describes \d+"),
    ("garbage-idx", r"\.idx is not a Megatron index \(bad header\)"),
    ("short-idx", r"\.idx is too short to be a Megatron index \(5 bytes\)"),
    ("truncated-idx", r"\.idx is truncated \(40 bytes, its header needs \d+\)"),
    ("idx-is-a-directory", r"is missing .*copy\.idx"),
])
def test_dataset_files_that_do_not_fit_together_are_refused_in_one_line(
        prefixes, tmp_path, damage, message):
    prefix = _copy_dataset(prefixes[0], str(tmp_path / "copy"))
    config = DataConfig(data_path=[prefix], seq_length=16)
    check_data_files(config)  # intact: accepted
    if damage == "truncate-bin":
        os.truncate(prefix + ".bin", 100)
    elif damage == "other-idx":
        shutil.copyfile(prefixes[1] + ".idx", prefix + ".idx")
    elif damage == "garbage-idx":
        (tmp_path / "copy.idx").write_bytes(b"not an index at all, just some bytes" * 3)
    elif damage == "short-idx":
        (tmp_path / "copy.idx").write_bytes(b"MMIDI")
    elif damage == "truncated-idx":
        os.truncate(prefix + ".idx", 40)
    else:
        os.remove(prefix + ".idx")
        os.mkdir(prefix + ".idx")
    with pytest.raises(DataConfigError, match=message) as error:
        check_data_files(config)
    assert "\n" not in str(error.value) and "preprocess_data.py" in str(error.value)
    with pytest.raises(DataConfigError, match=message):
        build_datasets(config, TOKENIZER, train_samples=1, valid_samples=1)


@pytest.mark.parametrize("tokens, expected", [
    (["a"], (["a"], None)),
    (["a", "b"], (["a", "b"], None)),
    (["30", "a", "70", "b"], (["a", "b"], [30.0, 70.0])),
    (["0.5", " a "], (["a"], [0.5])),
    (None, None),
])
def test_parse_blend_reads_megatron_data_paths(tokens, expected):
    assert parse_blend(tokens) == expected


@pytest.mark.parametrize("tokens, message", [
    (["30", "a", "b"], "--data-path has 3 items; a weighted blend needs weight/prefix pairs"),
    (["0.3", "a", "0.7"], "--data-path has 3 items"),
    (["a", "30", "b", "70"], "'30' looks like a weight"),
    (["30", "a", "b", "70"], "expected 'weight prefix' pairs, got 'b' '70'"),
    (["0", "a"], "the weight of 'a' must be a positive number, got 0"),
    (["1", "a", "-2", "b"], "the weight of 'b' must be a positive number, got -2"),
    (["nan", "a"], "must be a positive number"),
])
def test_parse_blend_rejects_bad_lists_in_one_line(tokens, message):
    with pytest.raises(DataConfigError, match=re.escape(message)) as error:
        parse_blend(tokens)
    assert "\n" not in str(error.value)


def test_blend_syntax_is_checked_with_the_flags():
    with pytest.raises(DataConfigError, match="--valid-data-path has 3 items"):
        DataConfig(train_data_path=["a"], valid_data_path=["1", "b", "2"])


@pytest.mark.parametrize("kwargs, message", [
    ({}, "no data"),
    ({"mock_data": True, "data_path": ["a"]}, "--mock-data cannot"),
    ({"data_path": ["a"], "train_data_path": ["b"]}, "cannot be combined"),
    ({"valid_data_path": ["b"]}, "need --train-data-path"),
    ({"data_path": ["1", "a"], "test_data_path": ["b"]}, "cannot be combined"),
    ({"data_path": ["a"], "seq_length": 0}, "--seq-length"),
])
def test_data_config_rejects_contradictions(kwargs, message):
    with pytest.raises(DataConfigError, match=message):
        DataConfig(**kwargs)


def test_blend_cached_under_a_process_group(prefixes, tmp_path, single_process):
    """As in training: torch.distributed is up, Megatron's rank rule decides who builds, and
    the blend indices are cached under --data-cache-path."""
    from megatron_ponder.data import is_dataset_built_on_rank

    assert is_dataset_built_on_rank()  # TP rank 0 of a single pipeline stage
    config = DataConfig(data_path=["1", prefixes[0], "3", prefixes[1]], split="1,0,0",
                        seq_length=16, num_workers=0, data_cache_path=str(tmp_path))
    train, _, _ = build_datasets(config, TOKENIZER, train_samples=100, valid_samples=0,
                                 is_built_on_rank=is_dataset_built_on_rank)
    counts = collections.Counter(int(train[i]["dataset_id"]) for i in range(100))
    assert (counts[0], counts[1]) == (25, 75)
    assert len(list(tmp_path.glob("*-BlendedDataset-train-dataset_index.npy"))) == 1


def test_blend_proportions_match_the_weights_at_every_prefix(prefixes, tmp_path):
    """megatron-core assigns blend samples greedily (each next sample goes to the dataset
    furthest below its share), not at random, so after any number n of samples dataset i has
    held w_i * n samples to within one. A random sampler would need a tolerance of several
    sqrt(n w (1 - w)); one sample is the exact bound, so the test allows exactly that."""
    third = _write_dataset(str(tmp_path / "third"), 3, num_documents=40)
    weights = [0.2, 0.5, 0.3]
    config = DataConfig(data_path=["2", prefixes[0], "5", prefixes[1], "3", third],
                        split="1,0,0", seq_length=16, num_workers=0)
    train, _, _ = build_datasets(config, TOKENIZER, train_samples=1500, valid_samples=0)
    counts = numpy.zeros(3)
    for n in range(1, 1501):
        sample = train[n - 1]
        owner = int(sample["dataset_id"])
        counts[owner] += 1
        assert numpy.abs(counts - numpy.array(weights) * n).max() <= 1.0, (n, counts)
        assert all(token // 1000 == owner + 1 for token in _documents_of(sample))


def test_data_parallel_ranks_consume_the_global_batches_of_one_rank(prefixes):
    """Single-process counterpart of the 2-rank test below: the micro-batches of DP ranks 0
    and 1 together hold exactly the samples of each DP=1 global batch."""
    from tests.data.ranks import consumed_tokens

    config = DataConfig(data_path=["1", prefixes[0], "2", prefixes[1]], split="1,0,0",
                        seq_length=16, num_workers=0)
    datasets = build_datasets(config, TOKENIZER, train_samples=40, valid_samples=0)
    single = consumed_tokens(datasets, config, 0, 1, steps=5)
    ranks = [consumed_tokens(datasets, config, rank, 2, steps=5) for rank in (0, 1)]
    for step in range(5):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(single[step])
        assert len(single[step]) == 8 and len(ranks[0][step]) == 4
    assert single[0] != single[1]


def test_a_second_build_reads_the_cached_indices(prefixes, tmp_path, monkeypatch):
    """What the ranks after rank 0 do: the cache exists, so building writes nothing."""
    config = DataConfig(data_path=["1", prefixes[0], "3", prefixes[1]], split="1,0,0",
                        seq_length=16, num_workers=0, data_cache_path=str(tmp_path))
    first, _, _ = build_datasets(config, TOKENIZER, train_samples=50, valid_samples=0)
    cached = sorted(path.name for path in tmp_path.iterdir())
    assert any(name.endswith("GPTDataset-train-shuffle_index.npy") for name in cached)
    saved = []
    real_save = numpy.save
    monkeypatch.setattr(numpy, "save", lambda file, *a, **k: saved.append(file)
                        or real_save(file, *a, **k))
    second, _, _ = build_datasets(config, TOKENIZER, train_samples=50, valid_samples=0)
    assert saved == [] and sorted(path.name for path in tmp_path.iterdir()) == cached
    assert [second[i]["tokens"].tolist() for i in range(50)] == [
        first[i]["tokens"].tolist() for i in range(50)]


@pytest.mark.slow
def test_two_ranks_build_the_indices_once_and_see_the_samples_of_one(prefixes, tmp_path):
    """2 gloo ranks: only rank 0 writes the index caches (the other waits and reads them), a
    per-rank cache directory is refused on every rank, and DP=2 consumes exactly the global
    batches of DP=1."""
    from tests.data.ranks import build_once_and_consume, consumed_tokens
    from tests.distributed import run_ranks

    kwargs = dict(data_path=["1", prefixes[0], "2", prefixes[1]], split="1,0,0",
                  seq_length=16, num_workers=0)
    shared = str(tmp_path / "shared")
    results = run_ranks(build_once_and_consume, 2, kwargs, shared, str(tmp_path / "local"),
                        EOD, 5)
    for result in results:
        assert "is not shared: ranks [1]" in result["refused"]
    assert any(name.endswith("shuffle_index.npy") for name in results[0]["saved"])
    assert any(name.endswith("dataset_index.npy") for name in results[0]["saved"])
    assert results[1]["saved"] == []
    config = DataConfig(**kwargs, data_cache_path=shared)
    datasets = build_datasets(config, TOKENIZER, train_samples=40, valid_samples=0)
    single = consumed_tokens(datasets, config, 0, 1, steps=5)
    for step in range(5):
        assert sorted(results[0]["tokens"][step] + results[1]["tokens"][step]) == sorted(
            single[step])


@pytest.mark.slow
def test_a_weighted_blend_trains_and_a_missing_prefix_is_one_line(prefixes, tmp_path):
    """pretrain_ponder.py on a weighted blend of two datasets for 3 iterations."""
    from tests.distributed import run_ranks
    from tests.training.runs import pretrain_from_flags

    flags = ["--model-arch", "gpt_neox", "--num-layers", "2", "--hidden-size", "64",
             "--num-attention-heads", "4", "--seq-length", "16", "--tokenizer-type",
             "NullTokenizer", "--vocab-size", str(EOD), "--micro-batch-size", "2",
             "--global-batch-size", "4", "--lr", "1e-3", "--num-latent-thoughts", "1",
             "--jacobi-iterations", "2", "--num-workers", "0", "--log-interval", "1",
             "--eval-iters", "1", "--eval-interval", "3", "--train-iters", "3", "--split",
             "90,10,0", "--data-cache-path", str(tmp_path / "cache")]
    (result,) = run_ranks(pretrain_from_flags, 1,
                          flags + ["--data-path", "0.25", prefixes[0], "0.75", prefixes[1]])
    assert len(result["train_losses"]) == 3
    assert all(numpy.isfinite(result["train_losses"]))
    assert list(tmp_path.glob("cache/*-BlendedDataset-train-dataset_index.npy"))
    # Found while resolving the flags, before any process group exists: a one-line ConfigError.
    with pytest.raises(AssertionError, match=r"ConfigError: .*dataset '.*absent' is missing"):
        run_ranks(pretrain_from_flags, 1,
                  flags + ["--data-path", "1", prefixes[0], "1", str(tmp_path / "absent")])
