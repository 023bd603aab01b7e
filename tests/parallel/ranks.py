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

Weights: a pipeline stage draws only its own layers at initialisation, so to compare layouts
every case starts from the one-process model's weights (``initial_weights``), split into this
rank's shards.
"""

import os
import warnings
from typing import Dict, List, Optional

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


# ------------------------------------------------------------------ full tensors <-> shards
def _global_names(module) -> Dict[str, str]:
    """Local parameter name -> name in the one-stage model (global layer numbers)."""
    prefixes = {f"decoder.layers.{index}.": f"decoder.layers.{layer.layer_number - 1}."
                for index, layer in enumerate(module.decoder.layers)}
    names = {}
    for name, _ in module.named_parameters():
        renamed = name
        for local, global_ in prefixes.items():
            if name.startswith(local):
                renamed = global_ + name[len(local):]
        names[name] = renamed
    return names


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


def _local_shard(module, name: str, param, full: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    rank = parallel_state.get_tensor_model_parallel_rank()
    dim = param.partition_dim
    if _is_gated_fc1(module, name):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp, dim=dim)[rank], up.chunk(tp, dim=dim)[rank]], dim=dim)
    return full.chunk(tp, dim=dim)[rank]


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
    names = _global_names(module)
    out = {}
    for name, param in module.named_parameters():
        tensor = param.main_grad if use_grads else param.data
        out[names[name]] = _gather_full(module, name, param, tensor).float().numpy()
    return out


def load_full_weights(module, weights: Dict[str, np.ndarray]) -> None:
    """Copy the one-process model's weights into this rank's shards, in place (the optimizer
    and DDP buffers keep pointing at the same storage)."""
    names = _global_names(module)
    with torch.no_grad():
        for name, param in module.named_parameters():
            full = torch.from_numpy(weights[names[name]])
            param.data.copy_(_local_shard(module, name, param, full))


# ------------------------------------------------------------------ one case, many cases
def run_case(flags: List[str], steps: int, initial_weights: Optional[dict]) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.initialize import initialize_distributed
    from megatron_ponder.training.step import reduce_reported_loss
    from megatron_ponder.training.trainer import Trainer
    from megatron_ponder.training.validation import resolve_config

    config = parse_args(flags)
    config = resolve_config(config, int(os.environ.get("WORLD_SIZE", "1")))
    initialize_distributed(config.parallel, config.train.seed)
    try:
        trainer = Trainer(config)
        module = trainer.model.module
        if initial_weights is not None:
            load_full_weights(module, initial_weights)
        result = {"rank": dist.get_rank(),
                  "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
                  "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                  "dp_rank": parallel_state.get_data_parallel_rank(),
                  "losses": [], "grad_norms": [], "jacobi": [], "local_jacobi": []}
        if initial_weights is None:  # a one-process reference: its weights seed the others
            result["initial_weights"] = full_tensors(module, use_grads=False)
        data = trainer._data()
        for step in range(steps):
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
        result["final_weights"] = full_tensors(module, use_grads=False)
        return result
    finally:
        parallel_state.destroy_model_parallel()


def run_cases(cases: List[dict], initial_weights: Dict[str, dict]) -> List[dict]:
    """``cases``: dicts with ``name``, ``flags``, ``steps`` and ``weights`` (a key of
    ``initial_weights``, or None to keep this layout's own initialisation)."""
    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    # This module imports torch before run_ranks sets OMP_NUM_THREADS=1, so torch sized its
    # thread pool for the whole machine; ranks sharing the cores would then spin against each
    # other (40x slower steps measured with 2 ranks on 2 cores).
    torch.set_num_threads(1)

    results = []
    try:
        for case in cases:
            weights = initial_weights.get(case["weights"]) if case.get("weights") else None
            outcome = run_case(case["flags"], case["steps"], weights)
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
