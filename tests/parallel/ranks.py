"""Code executed on every rank by the parallel-layout tests (see test_layout_parity.py).

One launch of N ranks runs several cases one after the other; each case initialises megatron's
parallel state for its own (TP, PP, DP) layout (with TP x PP x DP = N), trains a few steps
through the real ``Trainer`` and returns what the tests compare against one process:

* the loss and every parameter's gradient after the first step's forward/backward (after the
  data-parallel reduction and per-token scaling, before the optimizer step), as full tensors
  under global names: tensor-parallel shards are gathered, pipeline stages renamed to global
  layer numbers (with the distributed optimizer, each data-parallel rank's reduce-scattered
  shard of the gradient buffers is gathered first);
* the loss and gradient norm of every step, the parameters after the last step;
* the J drawn for every micro-batch, as seen by this rank.

Weights: every layout initialises from the seed alone (megatron_ponder/model/init.py), so each
case also returns its initial weights, gathered, for the tests to compare with one process's.
"""

import os
import warnings
from typing import Dict, List

import numpy as np
import torch

MODEL_FLAGS = {
    "llama": ["--model-arch", "llama", "--num-layers", "2", "--hidden-size", "32",
              "--num-attention-heads", "4", "--num-query-groups", "2",
              "--ffn-hidden-size", "64"],
    "gpt_neox": ["--model-arch", "gpt_neox", "--num-layers", "2", "--hidden-size", "32",
                 "--num-attention-heads", "4"],
}
COMMON_FLAGS = [
    "--seq-length", "16", "--mock-data", "--tokenizer-type", "NullTokenizer",
    "--vocab-size", "200", "--micro-batch-size", "2", "--global-batch-size", "8",
    "--lr", "1e-3", "--lr-warmup-iters", "0", "--lr-decay-iters", "10", "--num-workers", "0",
    "--log-interval", "100", "--eval-iters", "1", "--seed", "5",
    "--random-jacobi-iterations",  # the architecture's recipe: J varies per micro-batch
    # Adam moves a weight by lr * g / (|g| + eps): near g = 0 a rounding difference in g is
    # amplified up to lr / (4 eps) (2.5e4 with eps 1e-8). eps 1e-6 keeps that below 250, so
    # weights after a few steps can be compared at 1e-5 like the gradients themselves.
    "--adam-eps", "1e-6",
]


def case_flags(arch: str, thoughts: int, tp: int = 1, pp: int = 1, *extra: str) -> List[str]:
    flags = MODEL_FLAGS[arch] + COMMON_FLAGS + [
        "--num-latent-thoughts", str(thoughts),
        "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    if tp > 1:
        flags.append("--sequence-parallel")
    return flags + list(extra)


# ------------------------------------------------------------------ shards -> full tensors
def _is_gated_fc1(module, name: str) -> bool:
    # SwiGLU's fc1 holds [gate; up]; each tensor-parallel rank holds [its gate; its up].
    return module.config.gated_linear_unit and "mlp.linear_fc1" in name


def _gather_full(module, name: str, param, tensor: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return tensor.detach().clone()
    shards = [torch.empty_like(tensor) for _ in range(tp)]
    torch.distributed.all_gather(shards, tensor.contiguous(),
                                 group=parallel_state.get_tensor_model_parallel_group())
    dim = param.partition_dim
    if _is_gated_fc1(module, name):
        halves = [shard.chunk(2, dim=dim) for shard in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
    return torch.cat(shards, dim=dim)


def complete_distributed_optimizer_grads(ddp_model) -> None:
    """With the distributed optimizer, the data-parallel reduction is a reduce-scatter: each
    rank holds the reduced gradient of its own shard of every bucket only. Gather the shards so
    that every rank's buffers hold the full reduced gradients (for comparison; the optimizer
    only reads its own shard, which this leaves unchanged)."""
    import torch.distributed as dist

    if not ddp_model.ddp_config.use_distributed_optimizer:
        return
    for group in ddp_model.bucket_groups:
        size = group.intra_distributed_optimizer_instance_size
        rank = group.intra_distributed_optimizer_instance_rank
        for bucket in group.buckets:
            shard = bucket.grad_data.numel() // size
            local = bucket.grad_data[rank * shard:(rank + 1) * shard].clone()
            dist.all_gather_into_tensor(bucket.grad_data, local,
                                        group=group.intra_distributed_optimizer_instance_group)


def full_tensors(module, use_grads: bool) -> Dict[str, np.ndarray]:
    """Every parameter (or its DDP gradient) of this stage as a full array, by global name.
    (numpy, not torch: torch tensors cross process boundaries through shared memory that
    dies with the rank process.)"""
    from megatron_ponder.model.init import layout_independent_names

    names = layout_independent_names(module)
    out = {}
    for name, param in module.named_parameters():
        tensor = param.main_grad if use_grads else param.data
        out[names[name]] = _gather_full(module, name, param, tensor).float().numpy()
    return out


# ------------------------------------------------------------------ one case, many cases
def run_case(flags: List[str], steps: int) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.step import reduce_reported_loss
    from megatron_ponder.training.trainer import training_session

    with training_session(parse_args(flags), keep_process_group=True) as trainer:
        module = trainer.model.module
        result = {"rank": dist.get_rank(),
                  "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
                  "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                  "dp_rank": parallel_state.get_data_parallel_rank(),
                  "losses": [], "grad_norms": [], "jacobi": [], "local_jacobi": [],
                  "initial_weights": full_tensors(module, use_grads=False)}
        data = trainer.training_data()
        for step in range(steps):
            trainer._set_batch_size()  # --rampup-batch-size: this step's micro-batch count
            reports = trainer.compute_gradients(data)
            result["local_jacobi"].append(list(trainer.forward_step.jacobi_used))
            result["jacobi"].append(trainer._gather_jacobi())
            if step == 0:
                complete_distributed_optimizer_grads(trainer.model)
                result["grads"] = full_tensors(module, use_grads=True)
            result["losses"].append(reduce_reported_loss(reports))
            grad_norm, _ = trainer.apply_update()
            result["grad_norms"].append(grad_norm)
            trainer.iteration += 1
            trainer.consumed_samples += trainer.current_global_batch_size
        result["final_weights"] = full_tensors(module, use_grads=False)
        return result


def run_cases(cases: List[dict]) -> List[dict]:
    """``cases``: dicts with ``name``, ``flags`` and ``steps``."""
    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    # This module imports torch before run_ranks sets OMP_NUM_THREADS=1, so torch sized its
    # thread pool for the whole machine; ranks sharing the cores would then spin against each
    # other (40x slower steps measured with 2 ranks on 2 cores).
    torch.set_num_threads(1)

    results = []
    try:
        for case in cases:
            outcome = run_case(case["flags"], case["steps"])
            outcome["name"] = case["name"]
            results.append(outcome)
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return results


def pretrain_expecting_error_then_pretrain(failing_flags: List[str], flags: List[str]):
    """Two runs in this process: the first must fail (its message is returned), the second
    runs to the end (its TrainingResult is returned as a dict)."""
    import dataclasses

    warnings.filterwarnings("ignore")
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.trainer import pretrain

    torch.set_num_threads(1)
    from megatron.core import parallel_state

    try:
        pretrain(parse_args(failing_flags))
        message = None
    except Exception as error:  # the message is what the test checks
        message = f"{type(error).__name__}: {error}"
    # pretrain's shutdown ends the process group but leaves megatron's groups registered.
    parallel_state.destroy_model_parallel()
    return message, dataclasses.asdict(pretrain(parse_args(flags)))


def built_model_weights(cases: List[dict]) -> List[dict]:
    """Build (only build) a model per case and return its initial weights as full tensors.
    ``cases``: dicts with ``model`` (ModelConfig keyword arguments), ``tp``, ``pp`` and
    ``seed``. The process's torch RNG is seeded differently on purpose: only ``seed`` counts."""
    warnings.filterwarnings("ignore")
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ponder.config import ModelConfig, ParallelConfig, PonderConfig
    from megatron_ponder.model import build_model
    from megatron_ponder import mcore

    torch.set_num_threads(1)
    results = []
    try:
        for case in cases:
            parallel = ParallelConfig(tensor_model_parallel_size=case["tp"],
                                      pipeline_model_parallel_size=case["pp"],
                                      sequence_parallel=case["tp"] > 1)
            mcore.init(parallel, seed=1000 + int(os.environ.get("RANK", "0")))
            try:
                model = build_model(ModelConfig(**case["model"]), PonderConfig(), parallel,
                                    seed=case["seed"])
                results.append({"tp_rank": parallel_state.get_tensor_model_parallel_rank(),
                                "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                                "weights": full_tensors(model, use_grads=False)})
            finally:
                parallel_state.destroy_model_parallel()
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return results
