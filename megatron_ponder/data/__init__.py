"""Training data: megatron-core GPT datasets behind Megatron-LM's data flags.

Typical use by the training loop::

    from megatron_ponder.data import DataConfig, build_datasets, build_iterators
    from megatron_ponder.tokenizer import build_tokenizer

    config = DataConfig(data_path=["data/corpus_text_document"], split="98,2,0", seq_length=2048)
    datasets = build_datasets(config, build_tokenizer(), train_samples=train_iters * gbs,
                              valid_samples=eval_samples)
    train_iter, valid_iter, _ = build_iterators(datasets, config, micro_batch_size=4,
                                                data_parallel_rank=dp_rank,
                                                data_parallel_size=dp_size)
    batch = next(train_iter)   # {"tokens": [4, 2048], "labels": ..., "loss_mask": ..., ...}

Preprocessing (text -> .bin/.idx) lives in ``megatron_ponder.data.preprocess`` and the bundled
corpus in ``megatron_ponder.data.default_corpus``.
"""

from megatron_ponder.data.config import (
    DataConfig,
    DataConfigError,
)
from megatron_ponder.data.datasets import (
    build_datasets,
    check_data_files,
    data_blends,
    gpt_dataset_config,
    is_dataset_built_on_rank,
    parse_blend,
)
from megatron_ponder.data.iterators import PretrainingSampler, build_data_loader, build_iterators

__all__ = [
    "DataConfig",
    "DataConfigError",
    "PretrainingSampler",
    "build_data_loader",
    "build_datasets",
    "build_iterators",
    "check_data_files",
    "data_blends",
    "gpt_dataset_config",
    "is_dataset_built_on_rank",
    "parse_blend",
]
