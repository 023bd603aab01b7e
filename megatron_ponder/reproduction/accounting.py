"""What each arm costs: parameters, training FLOPs over all passes (per iteration, with the
same J draws as the run), inference FLOPs per token. Computed from the arm's flags alone."""

from typing import List

from megatron_ponder.model.ponder import draw_jacobi_iterations
from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.config import PretrainConfig
from megatron_ponder.training.flops import inference_flops_per_token, parameter_count, \
    step_flops


def arm_config(flags: List[str]) -> PretrainConfig:
    """The run's config from its pretrain_ponder.py flags, vocabulary padded as training does
    (--make-vocab-size-divisible-by at TP=1)."""
    from dataclasses import replace

    from megatron_ponder.tokenizer import build_tokenizer

    config = parse_args(list(flags))
    tokenizer = build_tokenizer(config.tokenizer.spec())
    config.model = replace(config.model,
                           vocab_size=config.tokenizer.padded_vocab_size(tokenizer, 1))
    return config


def cumulative_training_flops(config: PretrainConfig, iterations: int) -> List[float]:
    """Training FLOPs after each of the first ``iterations`` iterations (entry i = after i+1),
    counting every pass, --ponder-grad-passes and --ponder-warmup-iters, and the J each
    micro-batch draws (the same (seed, iteration, micro-batch) rule as training)."""
    train, ponder = config.train, config.ponder
    global_batch = train.global_batch_size or train.micro_batch_size
    microbatches = global_batch // train.micro_batch_size
    total, curve = 0.0, []
    for iteration in range(iterations):
        if ponder.random_jacobi_iterations:
            jacobi = [draw_jacobi_iterations(ponder.random_jacobi_iterations, train.seed,
                                             iteration, index)
                      for index in range(microbatches)]
        else:
            jacobi = [ponder.jacobi_iterations] * microbatches
        total += step_flops(config.model, ponder, config.data.seq_length,
                            train.micro_batch_size, jacobi,
                            num_latent_thoughts=ponder.thoughts_at(iteration))
        curve.append(total)
    return curve


def arm_costs(config: PretrainConfig) -> dict:
    return dict(
        parameters=parameter_count(config.model, config.ponder),
        inference_flops_per_token=inference_flops_per_token(
            config.model, config.ponder, config.data.seq_length),
    )
