"""Data-parallel micro-batch iterators over the datasets of ``build_datasets``.

Samples are consumed in the dataset's (already shuffled) order, as Megatron-LM's "single"
dataloader does: global batch ``g`` holds samples ``[g * m * d, (g + 1) * m * d)`` for
micro-batch size ``m`` and data-parallel size ``d``; data-parallel rank ``r`` takes the ``r``-th
slice of ``m``. Resuming from ``consumed_samples`` therefore continues exactly where a run
stopped, whatever the data-parallel size was.
"""

import itertools
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

from megatron_ponder.data.config import DataConfig

if TYPE_CHECKING:
    import torch


class PretrainingSampler:
    """Index lists of this rank's micro-batches, from ``consumed_samples`` on.

    With ``cyclic`` the indices wrap around the dataset forever (validation: evaluation never
    runs dry and never repeats before the set is exhausted); otherwise iteration stops before an
    incomplete global batch.
    """

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int = 0,
        data_parallel_size: int = 1,
        cyclic: bool = False,
    ) -> None:
        if total_samples <= 0:
            raise ValueError(f"the dataset is empty (total_samples={total_samples})")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(
                f"data_parallel_rank {data_parallel_rank} is not in [0, {data_parallel_size})"
            )
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        global_batch = micro_batch_size * data_parallel_size
        if cyclic and total_samples < global_batch:
            raise ValueError(
                f"{total_samples} samples cannot fill one global batch of {global_batch}"
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.cyclic = cyclic

    def __iter__(self) -> Iterator[List[int]]:
        global_batch = self.micro_batch_size * self.data_parallel_size
        first = self.data_parallel_rank * self.micro_batch_size
        start = self.consumed_samples
        if self.cyclic:
            start %= self.total_samples
            steps = itertools.count(start, global_batch)
        else:
            steps = range(start, self.total_samples - global_batch + 1, global_batch)
        for batch_start in steps:
            indices = range(batch_start + first, batch_start + first + self.micro_batch_size)
            yield [index % self.total_samples for index in indices]


def build_data_loader(
    dataset,
    micro_batch_size: int,
    consumed_samples: int = 0,
    data_parallel_rank: int = 0,
    data_parallel_size: int = 1,
    num_workers: int = 2,
    cyclic: bool = False,
) -> "torch.utils.data.DataLoader":
    """A DataLoader yielding this rank's micro-batches as dicts of [micro_batch_size, ...]
    tensors (``tokens``, ``labels``, ``loss_mask``, ``position_ids``, ...)."""
    # Imported here so that the preprocessing workers, which import this package, skip torch.
    import torch

    sampler = PretrainingSampler(len(dataset), consumed_samples, micro_batch_size,
                                 data_parallel_rank, data_parallel_size, cyclic)
    # Every iterator over a DataLoader draws a worker seed from its generator. With the default
    # (the global torch RNG) a run resumed from a checkpoint, which builds its iterator after
    # restoring the RNG, would continue one draw off the uninterrupted run; the samples
    # themselves are deterministic, so a fixed private generator loses nothing.
    generator = torch.Generator()
    generator.manual_seed(0)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=generator,
    )


def build_iterators(
    datasets: Tuple[Optional[object], Optional[object], Optional[object]],
    config: DataConfig,
    micro_batch_size: int,
    data_parallel_rank: int = 0,
    data_parallel_size: int = 1,
    consumed_train_samples: int = 0,
    consumed_valid_samples: int = 0,
) -> Tuple[Optional[Iterator], Optional[Iterator], Optional[Iterator]]:
    """(train, valid, test) micro-batch iterators; None where the dataset is None.

    Train is one pass from ``consumed_train_samples`` (size the dataset with
    ``train_iters * global_batch_size`` samples). Valid cycles from ``consumed_valid_samples``.
    Test is one pass from the start.
    """
    train, valid, test = datasets

    def loader(dataset, consumed, cyclic):
        if dataset is None:
            return None
        return iter(build_data_loader(dataset, micro_batch_size, consumed, data_parallel_rank,
                                      data_parallel_size, config.num_workers, cyclic))

    return (loader(train, consumed_train_samples, False),
            loader(valid, consumed_valid_samples, True),
            loader(test, 0, False))
