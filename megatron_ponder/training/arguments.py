"""Command line of pretrain_ponder.py: Megatron-LM's flag names plus the ponder flags, all
generated from the config dataclasses by ``megatron_ponder.flags``."""

import argparse
from typing import List, Optional

import torch

from megatron_ponder.config import RANDOM_JACOBI_RECIPES, ModelConfig, ParallelConfig, \
    PonderConfig
from megatron_ponder.data.config import DataConfig, DataConfigError
from megatron_ponder.flags import OneLineErrorParser, add_arguments, from_arguments
from megatron_ponder.training.config import CheckpointConfig, LoggingConfig, OptimConfig, \
    PerformanceConfig, PretrainConfig, TokenizerConfig, TrainConfig
from megatron_ponder.training.megatron_flags import MegatronModelFlags, add_unsupported_arguments
from megatron_ponder.training.presets import PRESETS, get_preset

# (PretrainConfig field, dataclass, argument group title)
SECTIONS = (
    ("model", ModelConfig, "model"), ("ponder", PonderConfig, "ponder"),
    ("parallel", ParallelConfig, "parallel"), ("optim", OptimConfig, "optimizer"),
    ("train", TrainConfig, "training"), ("data", DataConfig, "data"),
    ("tokenizer", TokenizerConfig, "tokenizer"), ("checkpoint", CheckpointConfig, "checkpoint"),
    ("logging", LoggingConfig, "logging"), ("performance", PerformanceConfig, "GPU performance"),
    ("megatron", MegatronModelFlags, "Megatron-LM model flags"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="pretrain_ponder.py",
        description="Pretrain a PonderLM-2 model (Megatron-LM flags; run under torchrun). "
                    f"Presets: {', '.join(PRESETS)}.")
    for _, cls, title in SECTIONS:
        add_arguments(parser, cls, title)
    add_unsupported_arguments(parser)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> PretrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except (ValueError, DataConfigError) as error:
        parser.error(str(error))


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The run's configs from parsed flags: defaults <- --model-preset <- explicit flags."""
    preset = get_preset(args.model_preset) if getattr(args, "model_preset", None) else {}
    sections = {}
    for name, cls, _ in SECTIONS:
        if name == "data":  # the data shuffles follow the run's --seed
            continue
        sections[name] = from_arguments(cls, args, preset)
    sections["data"] = from_arguments(DataConfig, args, preset, seed=sections["train"].seed)
    model, ponder = sections["model"], sections["ponder"]
    if model.bf16:
        model.params_dtype = torch.bfloat16
    elif model.fp16:
        model.params_dtype = torch.float16
    sections["megatron"].check(model, sections["data"].seq_length)
    if getattr(args, "random_jacobi_iterations", None) == []:
        # The flag without values: the paper's recipe for this architecture.
        ponder.random_jacobi_iterations = RANDOM_JACOBI_RECIPES[model.arch]
    return PretrainConfig(**sections)
