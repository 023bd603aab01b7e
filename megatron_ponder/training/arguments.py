"""Command line of pretrain_ponder.py: Megatron-LM's flag names plus the ponder flags."""

import argparse
from typing import List, Optional

import torch

from megatron_ponder.config import RANDOM_JACOBI_RECIPES, ModelConfig, ParallelConfig, \
    PonderConfig
from megatron_ponder.data.config import DataConfigError, add_data_arguments, \
    data_config_from_args
from megatron_ponder.training.cli import add_dataclass_arguments, build_dataclass
from megatron_ponder.training.config import CheckpointConfig, LoggingConfig, OptimConfig, \
    PretrainConfig, TokenizerConfig, TrainConfig
from megatron_ponder.training.presets import PRESETS, get_preset

_SECTIONS = (
    ("model", ModelConfig), ("ponder", PonderConfig), ("parallel", ParallelConfig),
    ("optim", OptimConfig), ("train", TrainConfig), ("tokenizer", TokenizerConfig),
    ("checkpoint", CheckpointConfig), ("logging", LoggingConfig),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_ponder.py",
        description="Pretrain a PonderLM-2 model (Megatron-LM flags; run under torchrun). "
                    f"Presets: {', '.join(PRESETS)}.")
    for title, cls in _SECTIONS:
        add_dataclass_arguments(parser, cls, title)
    add_data_arguments(parser)
    parser.add_argument("--seq-length", type=int, default=argparse.SUPPRESS,
                        help="tokens per sample (default: the preset's, else 2048)")
    return parser


def parse_args(argv: Optional[List[str]] = None) -> PretrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except (ValueError, DataConfigError) as error:
        parser.error(str(error))


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    preset = get_preset(args.model_preset) if getattr(args, "model_preset", None) else {}
    if not hasattr(args, "seq_length"):
        args.seq_length = preset.get("seq_length", 2048)
    if not hasattr(args, "seed"):
        args.seed = TrainConfig.__dataclass_fields__["seed"].default
    model = build_dataclass(ModelConfig, args, preset)
    if model.bf16:
        model.params_dtype = torch.bfloat16
    elif model.fp16:
        model.params_dtype = torch.float16
    ponder = build_dataclass(PonderConfig, args, preset)
    if getattr(args, "random_jacobi_iterations", None) == []:
        # The flag without values: the paper's recipe for this architecture.
        ponder.random_jacobi_iterations = RANDOM_JACOBI_RECIPES[model.arch]
    return PretrainConfig(
        model=model,
        ponder=ponder,
        parallel=build_dataclass(ParallelConfig, args, preset),
        optim=build_dataclass(OptimConfig, args, preset),
        train=build_dataclass(TrainConfig, args, preset),
        data=data_config_from_args(args),
        tokenizer=build_dataclass(TokenizerConfig, args, preset),
        checkpoint=build_dataclass(CheckpointConfig, args, preset),
        logging=build_dataclass(LoggingConfig, args, preset),
    )
