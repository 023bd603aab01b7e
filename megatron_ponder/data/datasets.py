"""Train/valid/test datasets from megatron-core's BlendedMegatronDatasetBuilder and GPTDataset.

Nothing of the sample logic is re-implemented: megatron-core shuffles documents, packs them
into ``seq_length + 1`` token windows across document boundaries (EOD stays in the stream),
blends datasets by weight and caches the indices. Each sample is a dict of 1-D tensors:
``tokens``, ``labels`` (tokens shifted by one), ``loss_mask``, ``position_ids`` (plus
``attention_mask`` when asked, and ``dataset_id`` from blends).

megatron-core is imported inside the functions: it costs seconds and hundreds of MB per process,
and the preprocessing workers import this package.
"""

import os
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from megatron_ponder.data.config import DataConfig, DataConfigError
from megatron_ponder.tokenizer import TextTokenizer

Blend = Tuple[List[str], Optional[List[float]]]

_PER_SPLIT_FLAGS = ("--train-data-path", "--valid-data-path", "--test-data-path")


def parse_blend(tokens: Optional[Sequence[str]], flag: str = "--data-path") -> Optional[Blend]:
    """``--data-path`` tokens -> (prefixes, weights or None), as Megatron-LM reads them.

    ``["a"]`` -> (["a"], None); ``["a", "b"]`` -> (["a", "b"], None), blended by size;
    ``["30", "a", "70", "b"]`` -> (["a", "b"], [30.0, 70.0]). Anything else (a weight
    without its prefix, a weight that is not positive, numbers among prefixes) is a
    DataConfigError naming ``flag``.
    """
    if not tokens:
        return None
    tokens = list(tokens)
    if _is_number(tokens[0]):
        if len(tokens) % 2:
            raise DataConfigError(
                f"{flag} has {len(tokens)} items; a weighted blend needs weight/prefix pairs "
                f"('W1 P1 W2 P2 ...'): {' '.join(tokens)}")
        for weight, prefix in zip(tokens[0::2], tokens[1::2]):
            if not _is_number(weight) or _is_number(prefix):
                raise DataConfigError(
                    f"{flag}: expected 'weight prefix' pairs, got {weight!r} {prefix!r} "
                    f"in: {' '.join(tokens)}")
            if not float(weight) > 0 or float(weight) == float("inf"):
                raise DataConfigError(
                    f"{flag}: the weight of {prefix.strip()!r} must be a positive number, "
                    f"got {weight}")
        return [prefix.strip() for prefix in tokens[1::2]], [float(w) for w in tokens[0::2]]
    numbers = [token for token in tokens if _is_number(token)]
    if numbers:
        raise DataConfigError(
            f"{flag}: {numbers[0]!r} looks like a weight, but the list does not start with "
            f"one; give prefixes only, or 'weight prefix' pairs: {' '.join(tokens)}")
    return [prefix.strip() for prefix in tokens], None


def gpt_dataset_config(config: DataConfig, tokenizer: TextTokenizer):
    """megatron-core's GPTDatasetConfig for ``config`` (checks that every prefix exists)."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    blends = check_data_files(config)
    blend = blends["--data-path"]
    blend_per_split = None
    if blends["--train-data-path"] is not None:
        blend_per_split = [blends[flag] for flag in _PER_SPLIT_FLAGS]
    return GPTDatasetConfig(
        random_seed=config.seed,
        sequence_length=config.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=config.split if blend is not None else None,
        path_to_cache=config.data_cache_path,
        mmap_bin_files=config.mmap_bin_files,
        tokenizer=tokenizer,
        reset_position_ids=config.reset_position_ids,
        reset_attention_mask=config.reset_attention_mask,
        eod_mask_loss=config.eod_mask_loss,
        create_attention_mask=config.create_attention_mask,
    )


def build_datasets(
    config: DataConfig,
    tokenizer: TextTokenizer,
    train_samples: int,
    valid_samples: int,
    test_samples: int = 0,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
):
    """(train, valid, test) datasets with at least the requested number of samples each.

    A dataset is None where its split is empty (``--split 99,1,0`` has no test) or where
    ``is_built_on_rank()`` is False (default: every rank builds; see
    ``is_dataset_built_on_rank`` for Megatron's rule). Datasets smaller than the request are
    repeated epoch by epoch, each epoch shuffled anew, as in Megatron-LM. Must be called on
    every rank when torch.distributed is initialised (rank 0 builds the index cache first).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset

    for name, count in (("train", train_samples), ("valid", valid_samples),
                        ("test", test_samples)):
        if count < 0:
            raise DataConfigError(f"{name}_samples must be >= 0, got {count}")
    dataset_class = MockGPTDataset if config.mock_data else GPTDataset
    dataset_config = gpt_dataset_config(config, tokenizer)
    if config.data_cache_path is not None:
        check_cache_is_shared(config.data_cache_path)
    builder = BlendedMegatronDatasetBuilder(
        dataset_class,
        [train_samples, valid_samples, test_samples],
        is_built_on_rank or (lambda: True),
        dataset_config,
    )
    train, valid, test = builder.build()
    return train, valid, test


def check_cache_is_shared(cache_path: str) -> None:
    """Under torch.distributed: make sure every rank sees the same ``--data-cache-path``.

    megatron-core builds the index caches on global rank 0 only, while the other ranks wait at
    a barrier and then read the files. A cache directory that is local to each node would leave
    the other nodes without the files; this check turns that into one clear error on every
    rank, before anything is built. Costs a broadcast and two barriers.
    """
    import socket

    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    token = [None]
    marker = None
    if dist.get_rank() == 0:
        token[0] = f".shared-check-{os.getpid()}-{os.urandom(4).hex()}"
        os.makedirs(cache_path, exist_ok=True)
        marker = os.path.join(cache_path, token[0])
        with open(marker, "w"):
            pass
    dist.broadcast_object_list(token, src=0)
    seen = os.path.exists(os.path.join(cache_path, token[0]))
    verdicts = [None] * dist.get_world_size()
    dist.all_gather_object(verdicts, (seen, socket.gethostname()))
    if marker is not None:
        os.remove(marker)
    blind = [rank for rank, (ok, _) in enumerate(verdicts) if not ok]
    if blind:
        raise DataConfigError(
            f"--data-cache-path {cache_path} is not shared: ranks {blind} (on "
            f"{', '.join(sorted({verdicts[rank][1] for rank in blind}))}) do not see what rank "
            "0 writes there; rank 0 builds the dataset indices once for all ranks, so put the "
            "cache on storage every node shares")


def is_dataset_built_on_rank() -> bool:
    """Megatron-LM's rule: only tensor-parallel rank 0 of the first and last pipeline stages
    reads data (the first embeds tokens, the last needs labels); the training loop broadcasts
    the batch to the other tensor-parallel ranks. True when model parallelism is not set up."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return True
    on_end_stage = (parallel_state.is_pipeline_first_stage(ignore_virtual=True)
                    or parallel_state.is_pipeline_last_stage(ignore_virtual=True))
    return on_end_stage and parallel_state.get_tensor_model_parallel_rank() == 0


def data_blends(config: DataConfig) -> Dict[str, Optional[Blend]]:
    """Flag -> the blend it names (None where not given), for ``--data-path`` and the three
    per-split flags; a DataConfigError names the flag whose syntax is wrong."""
    return {flag: parse_blend(getattr(config, flag[2:].replace("-", "_")), flag)
            for flag in ("--data-path",) + _PER_SPLIT_FLAGS}


def check_data_files(config: DataConfig) -> Dict[str, Optional[Blend]]:
    """``data_blends(config)``, after checking that every dataset they name has a readable
    ``.idx`` and a ``.bin`` of the size that index describes (else a one-line
    DataConfigError). Cheap (headers and sizes only), so it runs before any process group or
    model is built, and again where the datasets are built."""
    blends = data_blends(config)
    if not config.mock_data:
        for flag, blend in blends.items():
            if blend is not None:
                _check_prefixes_exist(blend[0], flag)
    return blends


# The Megatron index format (megatron-core's IndexedDataset): magic, version, dtype code,
# sequence and document counts, then int32 lengths, int64 byte pointers, int64 documents.
_INDEX_MAGIC = b"MMIDIDX\x00\x00"
_INDEX_HEADER = struct.Struct("<9sQBQQ")
_TOKEN_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # dtype code -> bytes


def _check_prefixes_exist(prefixes: Sequence[str], flag: str) -> None:
    for prefix in prefixes:
        missing = [path for path in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(path)]
        if missing:
            raise DataConfigError(
                f"{flag}: dataset {prefix!r} is missing {', '.join(missing)}; create it with "
                "tools/preprocess_data.py (or tools/prepare_default_corpus.py)"
            )
        problem = _index_problem(prefix)
        if problem is not None:
            raise DataConfigError(f"{flag}: dataset {prefix!r}: {problem}; recreate it with "
                                  "tools/preprocess_data.py")


def _index_problem(prefix: str) -> Optional[str]:
    """None if ``prefix.idx`` is a Megatron index whose sequences fit ``prefix.bin`` exactly,
    else what is wrong, in a few words."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    try:
        with open(idx_path, "rb") as f:
            header = f.read(_INDEX_HEADER.size)
            if len(header) < _INDEX_HEADER.size:
                return f"{idx_path} is too short to be a Megatron index ({len(header)} bytes)"
            magic, version, code, sequences, documents = _INDEX_HEADER.unpack(header)
            if magic != _INDEX_MAGIC or version != 1 or code not in _TOKEN_SIZES:
                return f"{idx_path} is not a Megatron index (bad header)"
            idx_size = os.fstat(f.fileno()).st_size
            needed = _INDEX_HEADER.size + sequences * (4 + 8) + documents * 8
            if idx_size < needed:
                return (f"{idx_path} is truncated ({idx_size} bytes, its header needs "
                        f"{needed})")
            if sequences == 0:
                return f"{idx_path} holds no documents"
            # The last sequence's length and pointer give the end of the token data.
            f.seek(_INDEX_HEADER.size + (sequences - 1) * 4)
            (last_length,) = struct.unpack("<i", f.read(4))
            f.seek(_INDEX_HEADER.size + sequences * 4 + (sequences - 1) * 8)
            (last_pointer,) = struct.unpack("<q", f.read(8))
        bin_size = os.path.getsize(bin_path)
    except OSError as error:
        return f"cannot read it ({error.strerror or error}: {error.filename or prefix})"
    expected = last_pointer + last_length * _TOKEN_SIZES[code]
    if last_length < 0 or last_pointer < 0 or expected != bin_size:
        return (f"{bin_path} has {bin_size} bytes but {idx_path} describes {expected}: the "
                f".bin and .idx files do not belong together (or one is damaged)")
    return None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
