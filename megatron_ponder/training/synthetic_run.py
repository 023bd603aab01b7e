"""Shared by the measurement tools: pretrain_ponder.py flags for a short run on megatron-core's
synthetic data (--mock-data), sized by the tool's own --arch/--num-layers/... flags, which
``add_synthetic_run_arguments`` makes from ``SyntheticRun``."""

import dataclasses
from dataclasses import dataclass

from megatron_ponder.config import ARCHITECTURES
from megatron_ponder.flags import add_arguments, field_default, option


@dataclass
class SyntheticRun:
    """The model and batch of a measurement run."""

    arch: str = option("llama", "model architecture", choices=ARCHITECTURES)
    num_layers: int = option(8, "decoder layers")
    hidden_size: int = option(256, "hidden size H")
    num_attention_heads: int = option(8, "attention heads")
    seq_length: int = option(128, "tokens per sample")
    micro_batch_size: int = option(4, "samples per micro-batch")
    micro_batches: int = option(8, "micro-batches per step")
    num_latent_thoughts: int = option(1, "K")
    jacobi_iterations: int = option(2, "J (fixed: V = K + J + 1 passes)")


def add_synthetic_run_arguments(parser, **defaults):
    """``SyntheticRun``'s flags, every value in the namespace (``defaults``: the tool's own)."""
    every = {field.name: field_default(field) for field in dataclasses.fields(SyntheticRun)}
    add_arguments(parser, SyntheticRun, "model and batch", defaults=dict(every, **defaults))


def synthetic_run_flags(args, train_iters: int, tensor_parallel: int = 1,
                        pipeline_parallel: int = 1):
    """Flags for ``train_iters`` steps of ``args``' model on mock data (seed 1, no workers)."""
    flags = [
        "--model-arch", args.arch, "--num-layers", str(args.num_layers),
        "--hidden-size", str(args.hidden_size),
        "--num-attention-heads", str(args.num_attention_heads),
        "--seq-length", str(args.seq_length), "--mock-data",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
        "--micro-batch-size", str(args.micro_batch_size),
        "--global-batch-size", str(args.micro_batch_size * args.micro_batches),
        "--num-latent-thoughts", str(args.num_latent_thoughts),
        "--jacobi-iterations", str(args.jacobi_iterations),
        "--tensor-model-parallel-size", str(tensor_parallel),
        "--pipeline-model-parallel-size", str(pipeline_parallel),
        "--train-iters", str(train_iters), "--num-workers", "0", "--seed", "1",
    ]
    if tensor_parallel > 1:
        flags.append("--sequence-parallel")
    return flags
