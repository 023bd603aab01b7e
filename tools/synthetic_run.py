"""Shared by the measurement tools: pretrain_ponder.py flags for a short run on megatron-core's
synthetic data (--mock-data), sized by the tool's own --arch/--num-layers/... arguments."""


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
