"""``DataConfig``: Megatron-LM's data flags as a dataclass, and the flags themselves."""

import argparse
from dataclasses import dataclass
from typing import List, Optional


class DataConfigError(ValueError):
    """Contradictory or missing data settings; the message says which flags."""


@dataclass
class DataConfig:
    """Where training data comes from and how samples are cut. Names follow Megatron-LM's flags."""

    data_path: Optional[List[str]] = None
    """``--data-path``: ``[prefix]``, ``[prefix, prefix, ...]`` (blended in proportion to their
    sizes) or ``[weight, prefix, weight, prefix, ...]`` (blended by weight). Each prefix names
    ``<prefix>.bin/.idx``; the blend is cut into train/valid/test by ``split``."""

    split: str = "969,30,1"
    """``--split``: relative train,valid,test shares of every ``data_path`` dataset's documents."""

    train_data_path: Optional[List[str]] = None
    """``--train-data-path``: the training blend, instead of ``data_path`` + ``split``."""

    valid_data_path: Optional[List[str]] = None
    """``--valid-data-path``: the validation blend (with ``train_data_path``)."""

    test_data_path: Optional[List[str]] = None
    """``--test-data-path``: the test blend (with ``train_data_path``)."""

    mock_data: bool = False
    """``--mock-data``: megatron-core's synthetic MockGPTDataset instead of files."""

    seq_length: int = 2048
    """``--seq-length``: tokens per sample (labels are the next ``seq_length`` tokens)."""

    seed: int = 1234
    """``--seed``: seeds the document and sample shuffles (and so the cached index names)."""

    data_cache_path: Optional[str] = None
    """``--data-cache-path``: where the shuffled sample indices are cached; None puts them
    under ``<prefix>/cache/`` as megatron-core does. Blends with a cache path need
    torch.distributed initialised (megatron-core asks for the rank)."""

    eod_mask_loss: bool = False
    """``--eod-mask-loss``: no loss on positions whose input token is EOD."""

    reset_position_ids: bool = False
    """``--reset-position-ids``: restart position ids after every EOD."""

    reset_attention_mask: bool = False
    """``--reset-attention-mask``: no attention across EOD (only with attention masks)."""

    create_attention_mask: bool = False
    """``--create-attention-mask-in-dataloader``: also return the [1, s, s] causal mask. Off by
    default (unlike Megatron-LM): the ponder attention builds its own mask over the (K+1)L slot
    sequence, and an s x s mask per sample would only cost memory."""

    num_workers: int = 2
    """``--num-workers``: DataLoader worker processes."""

    mmap_bin_files: bool = True
    """``--no-mmap-bin-files`` turns this off (read with file pointers instead of mmap)."""

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
        # group exists; whether the prefixes exist is checked when the datasets are built.
        from megatron_ponder.data.datasets import parse_blend

        for flag, tokens in (("--data-path", self.data_path),
                             ("--train-data-path", self.train_data_path),
                             ("--valid-data-path", self.valid_data_path),
                             ("--test-data-path", self.test_data_path)):
            parse_blend(tokens, flag)


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add Megatron-LM's data flags. ``--seq-length`` and ``--seed`` are left to the training
    parser (the model and the RNGs use them too); ``data_config_from_args`` reads them."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-path", nargs="*", default=None,
                       help="prefix, or prefixes, or 'weight prefix weight prefix ...'")
    group.add_argument("--split", default="969,30,1",
                       help="train,valid,test shares of --data-path")
    group.add_argument("--train-data-path", nargs="*", default=None)
    group.add_argument("--valid-data-path", nargs="*", default=None)
    group.add_argument("--test-data-path", nargs="*", default=None)
    group.add_argument("--mock-data", action="store_true",
                       help="synthetic data from megatron-core's MockGPTDataset")
    group.add_argument("--data-cache-path", default=None)
    group.add_argument("--eod-mask-loss", action="store_true")
    group.add_argument("--reset-position-ids", action="store_true")
    group.add_argument("--reset-attention-mask", action="store_true")
    group.add_argument("--create-attention-mask-in-dataloader", action="store_true")
    group.add_argument("--num-workers", type=int, default=2)
    group.add_argument("--no-mmap-bin-files", dest="mmap_bin_files", action="store_false")
    return parser


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """``DataConfig`` from a namespace parsed with ``add_data_arguments`` (plus the training
    parser's ``--seq-length`` and ``--seed`` when present)."""
    defaults = DataConfig.__dataclass_fields__
    return DataConfig(
        data_path=args.data_path or None,
        split=args.split,
        train_data_path=args.train_data_path or None,
        valid_data_path=args.valid_data_path or None,
        test_data_path=args.test_data_path or None,
        mock_data=args.mock_data,
        seq_length=getattr(args, "seq_length", defaults["seq_length"].default),
        seed=getattr(args, "seed", defaults["seed"].default),
        data_cache_path=args.data_cache_path,
        eod_mask_loss=args.eod_mask_loss,
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        create_attention_mask=args.create_attention_mask_in_dataloader,
        num_workers=args.num_workers,
        mmap_bin_files=args.mmap_bin_files,
    )
