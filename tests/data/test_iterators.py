"""Micro-batch iterators: Megatron's sample order, data-parallel slices, exact resumption."""

import argparse

import pytest
import torch

from megatron_ponder.data import (
    DataConfig,
    PretrainingSampler,
    build_iterators,
)
from megatron_ponder.flags import add_arguments, from_arguments


def _take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_data_parallel_ranks_take_consecutive_slices_of_each_global_batch():
    per_rank = [list(PretrainingSampler(40, 0, micro_batch_size=3, data_parallel_rank=rank,
                                        data_parallel_size=2)) for rank in range(2)]
    # Global batches of 6: rank 0 gets [0, 1, 2], rank 1 [3, 4, 5], then [6, 7, 8] / [9, 10, 11]...
    assert per_rank[0][:2] == [[0, 1, 2], [6, 7, 8]]
    assert per_rank[1][:2] == [[3, 4, 5], [9, 10, 11]]
    # 40 samples fill 6 global batches; the incomplete 7th is dropped.
    assert len(per_rank[0]) == len(per_rank[1]) == 6
    seen = sorted(index for rank in per_rank for batch in rank for index in batch)
    assert seen == list(range(36))


def test_resuming_from_consumed_samples_continues_exactly():
    uninterrupted = list(PretrainingSampler(100, 0, micro_batch_size=4))
    resumed = list(PretrainingSampler(100, 5 * 4, micro_batch_size=4))
    assert resumed == uninterrupted[5:]


def test_resuming_with_another_data_parallel_size_keeps_the_global_order():
    consumed = 12
    before = [index for batch in _take(PretrainingSampler(100, consumed, 6), 2) for index in batch]
    after = []
    for step in range(2):
        for rank in range(3):
            after += _take(PretrainingSampler(100, consumed + step * 6, 2, rank, 3), 1)[0]
    assert after == before


def test_cyclic_sampler_wraps_around_forever():
    batches = _take(PretrainingSampler(10, 8, micro_batch_size=4, cyclic=True), 3)
    assert batches == [[8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]


@pytest.mark.parametrize("kwargs", [
    {"total_samples": 0, "consumed_samples": 0, "micro_batch_size": 1},
    {"total_samples": 10, "consumed_samples": 0, "micro_batch_size": 0},
    {"total_samples": 10, "consumed_samples": -1, "micro_batch_size": 1},
    {"total_samples": 10, "consumed_samples": 0, "micro_batch_size": 1,
     "data_parallel_rank": 2, "data_parallel_size": 2},
])
def test_sampler_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        PretrainingSampler(**kwargs)


class _NumberedSamples(torch.utils.data.Dataset):
    """Sample i is a dict like GPTDataset's, with tokens all equal to i."""

    def __len__(self):
        return 50

    def __getitem__(self, index):
        return {"tokens": torch.full((8,), index), "loss_mask": torch.ones(8)}


def test_build_iterators_yields_batched_dicts():
    config = DataConfig(mock_data=True, num_workers=0)
    dataset = _NumberedSamples()
    train, valid, test = build_iterators((dataset, dataset, None), config, micro_batch_size=4,
                                         data_parallel_rank=1, data_parallel_size=2,
                                         consumed_train_samples=16, consumed_valid_samples=48)
    assert test is None
    batch = next(train)
    assert batch["tokens"].shape == (4, 8) and batch["loss_mask"].dtype == torch.float32
    assert batch["tokens"][:, 0].tolist() == [20, 21, 22, 23]  # rank 1 of global batch 16..23
    assert sum(1 for _ in train) == 3  # global batches from 24, 32, 40; 48.. is incomplete
    assert next(valid)["tokens"][:, 0].tolist() == [2, 3, 4, 5]  # wrapped: 48 -> 0
    for _ in range(100):  # validation never runs dry
        next(valid)


def test_data_flags_parse_into_a_data_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser, DataConfig)
    args = parser.parse_args(["--data-path", "40", "a", "60", "b", "--split", "98,2,0",
                              "--seq-length", "512", "--eod-mask-loss", "--num-workers", "0",
                              "--no-mmap-bin-files"])
    config = from_arguments(DataConfig, args)
    assert config.data_path == ("40", "a", "60", "b")
    assert (config.split, config.seq_length, config.seed) == ("98,2,0", 512, 1234)
    assert config.eod_mask_loss and not config.mmap_bin_files and config.num_workers == 0
    assert not config.create_attention_mask


def test_building_iterators_leaves_the_global_rng_alone():
    # A resumed run builds its iterators after restoring the checkpoint's RNG state; a draw
    # here would put it one draw off the uninterrupted run.
    config = DataConfig(mock_data=True, num_workers=0)
    dataset = _NumberedSamples()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    train, valid, _ = build_iterators((dataset, dataset, None), config, micro_batch_size=4)
    next(train), next(valid)
    assert torch.equal(torch.get_rng_state(), before)
