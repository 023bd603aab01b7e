"""Functions run on every rank by the multi-rank data tests, and their single-process
counterparts."""

import os


def consumed_tokens(datasets, config, data_parallel_rank, data_parallel_size, steps,
                    global_batch_size=8, micro_batch_size=2):
    """Per training step, the token rows this data-parallel rank consumes (in order)."""
    from megatron_ponder.data import build_iterators

    train_iter, _, _ = build_iterators(datasets, config, micro_batch_size,
                                       data_parallel_rank=data_parallel_rank,
                                       data_parallel_size=data_parallel_size)
    micro_batches = global_batch_size // (micro_batch_size * data_parallel_size)
    return [[row for _ in range(micro_batches) for row in next(train_iter)["tokens"].tolist()]
            for _ in range(steps)]


def build_once_and_consume(config_kwargs, shared_cache, local_cache_root, eod, steps):
    """On every rank of a gloo world: (1) a cache directory private to each rank (as a node-
    local disk would be) is refused; (2) with a shared one, count the index files this rank
    writes while building, and return the tokens it consumes as a data-parallel rank."""
    import numpy
    import torch.distributed as dist

    from megatron_ponder.data import DataConfig, DataConfigError, build_datasets
    from megatron_ponder.tokenizer import NULL_TOKENIZER, TokenizerSpec, build_tokenizer

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = build_tokenizer(TokenizerSpec(tokenizer_type=NULL_TOKENIZER, vocab_size=eod))
    private = DataConfig(**config_kwargs,
                         data_cache_path=os.path.join(local_cache_root, f"rank{rank}"))
    try:
        build_datasets(private, tokenizer, train_samples=steps * 8, valid_samples=0)
        refused = None
    except DataConfigError as error:
        refused = str(error)

    saved = []
    real_save = numpy.save

    def counting_save(file, *args, **kwargs):
        saved.append(os.path.basename(str(file)))
        return real_save(file, *args, **kwargs)

    numpy.save = counting_save
    try:
        config = DataConfig(**config_kwargs, data_cache_path=shared_cache)
        datasets = build_datasets(config, tokenizer, train_samples=steps * 8, valid_samples=0)
    finally:
        numpy.save = real_save
    tokens = consumed_tokens(datasets, config, rank, world, steps)
    dist.destroy_process_group()
    return {"refused": refused, "saved": saved, "tokens": tokens}
