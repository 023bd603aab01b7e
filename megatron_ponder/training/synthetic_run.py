"""For the measurement tools (tools/measure_*.py): pretrain_ponder.py flags for a short run on
megatron-core's synthetic data (--mock-data), sized by the tool's own --arch/--num-layers/...
arguments, which ``add_model_arguments`` defines."""


def add_model_arguments(parser, seq_length: int, micro_batches: int, jacobi_iterations: int):
    """The tool arguments ``synthetic_run_flags`` reads (defaults that differ per tool given)."""
    parser.add_argument("--arch", default="llama", choices=("llama", "gpt_neox"))
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-attention-heads", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=seq_length)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--micro-batches", type=int, default=micro_batches,
                        help="micro-batches per step")
    parser.add_argument("--num-latent-thoughts", type=int, default=1, help="K")
    parser.add_argument("--jacobi-iterations", type=int, default=jacobi_iterations,
                        help="J (fixed: V = K + J + 1 passes)")


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
