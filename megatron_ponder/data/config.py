"""``DataConfig``: Megatron-LM's data flags as a dataclass (``megatron_ponder.flags`` makes
the flags)."""

from dataclasses import dataclass
from typing import Optional, Tuple

from megatron_ponder.flags import Freezable, option


class DataConfigError(ValueError):
    """Contradictory or missing data settings; the message says which flags."""


# The run's seed (``--seed``, a TrainConfig field), also the data shuffles' default.
DEFAULT_SEED = 1234


@dataclass
class DataConfig(Freezable):
    """Where training data comes from and how samples are cut. Names follow Megatron-LM's flags."""

    data_path: Optional[Tuple[str, ...]] = option(
        None, "a prefix, several prefixes (blended in proportion to their sizes) or 'weight "
        "prefix weight prefix ...' (blended by weight); each prefix names <prefix>.bin/.idx; "
        "the blend is cut into train/valid/test by --split")
    split: str = option("969,30,1", "relative train,valid,test shares of every --data-path "
                        "dataset's documents")
    train_data_path: Optional[Tuple[str, ...]] = option(
        None, "the training blend, instead of --data-path and --split")
    valid_data_path: Optional[Tuple[str, ...]] = option(
        None, "the validation blend (with --train-data-path)")
    test_data_path: Optional[Tuple[str, ...]] = option(
        None, "the test blend (with --train-data-path)")
    mock_data: bool = option(False, "megatron-core's synthetic MockGPTDataset instead of files")
    seq_length: int = option(2048, "tokens per sample (labels are the next --seq-length "
                             "tokens); a --model-preset sets its own")
    seed: int = option(DEFAULT_SEED, "seeds the document and sample shuffles (and so the cached "
                       "index names); the training command line sets it from --seed", cli=False)
    data_cache_path: Optional[str] = option(
        None, "where the shuffled sample indices are cached (default: <prefix>/cache/, as "
        "megatron-core does); must be storage every node shares")
    eod_mask_loss: bool = option(False, "no loss on positions whose input token is EOD")
    reset_position_ids: bool = option(False, "restart position ids after every EOD")
    reset_attention_mask: bool = option(False, "no attention across EOD (only with attention "
                                        "masks)")
    # Off by default (unlike Megatron-LM): the ponder attention builds its own mask over the
    # (K+1)L slot sequence, and an s x s mask per sample would only cost memory.
    create_attention_mask: bool = option(
        False, "also return the [1, s, s] causal mask from the data loader",
        flag="--create-attention-mask-in-dataloader", negatable=True)
    num_workers: int = option(2, "DataLoader worker processes")
    mmap_bin_files: bool = option(True, "read the .bin files with mmap (--no-mmap-bin-files: "
                                  "with file pointers)")

    def __post_init__(self) -> None:
        per_split = any(path is not None for path in
                        (self.train_data_path, self.valid_data_path, self.test_data_path))
        if self.mock_data and (self.data_path or per_split):
            raise DataConfigError("--mock-data cannot be combined with data paths")
        if self.data_path and per_split:
            raise DataConfigError(
                "--data-path cannot be combined with --train-data-path/--valid-data-path/"
                "--test-data-path"
            )
        if per_split and not self.train_data_path:
            raise DataConfigError("--valid-data-path/--test-data-path need --train-data-path")
        if not (self.mock_data or self.data_path or per_split):
            raise DataConfigError(
                "no data: pass --data-path (or --train-data-path), or --mock-data; "
                "`python tools/prepare_default_corpus.py` builds a default corpus"
            )
        if self.seq_length <= 0:
            raise DataConfigError(f"--seq-length must be positive, got {self.seq_length}")
        # The blends' syntax (pairs, positive weights) is checked now, before any process
        # group exists; whether the prefixes exist, by check_data_files.
        from megatron_ponder.data.datasets import data_blends

        data_blends(self)
