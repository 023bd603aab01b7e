"""What a training checkpoint holds and how a run resumes from it: model, optimizer, LR
scheduler, RNG states, iteration and consumed samples, plus the run's config. The directory
layout, integrity checks and the save protocol are ``megatron_ponder.checkpoint``'s.

RNG states are restored only on the same layout. The distributed optimizer's state reloads at
another tensor/pipeline layout only if saved with --dist-ckpt-optim-fully-reshardable (its
default format reshards over data parallelism only, as in Megatron-LM).
"""

import json
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_ponder.checkpoint.discovery import find_checkpoint
from megatron_ponder.checkpoint.layout import CheckpointError, checkpoint_dir
from megatron_ponder.checkpoint.storage import (AsyncCheckpointWriter, config_to_json,
                                                load_sharded_state, parallel_layout,
                                                read_common_state, save_state)
from megatron_ponder.mcore.optimizer_state import (
    DP_RESHARDABLE, FULLY_RESHARDABLE, load_optimizer_state, materialize_adam_state,
    optimizer_metadata, prime_distributed_optimizer, uses_distributed_optimizer)


def _rng_state() -> Dict[str, Any]:
    state = {"random": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state) -> ShardedObject:
    # One object per (pipeline, tensor) rank; data-parallel ranks are replicas (as Megatron-LM).
    return ShardedObject(
        "rng_state", state,
        (parallel_state.get_pipeline_model_parallel_world_size(),
         parallel_state.get_tensor_model_parallel_world_size()),
        (parallel_state.get_pipeline_model_parallel_rank(),
         parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )


def save_checkpoint(root: str, iteration: int, model, optimizer, scheduler,
                    consumed_samples: int, config, optim_fully_reshardable: bool = False,
                    async_writer: Optional[AsyncCheckpointWriter] = None,
                    retain: Optional[int] = None) -> str:
    """Model, optimizer, scheduler, RNG, progress and config: everything a resume needs.

    ``optim_fully_reshardable`` picks the distributed optimizer's format (see FULLY_RESHARDABLE);
    with ``async_writer`` the files are written in the background (see AsyncCheckpointWriter);
    ``retain``: keep only that many newest checkpoints (--save-retain).
    """
    materialize_adam_state(optimizer)
    sharding_type = FULLY_RESHARDABLE if optim_fully_reshardable else DP_RESHARDABLE
    model_state = model.sharded_state_dict()
    return save_state(root, iteration, {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(
            model_state, metadata=optimizer_metadata(optimizer, sharding_type)),
        "distributed_optimizer": uses_distributed_optimizer(optimizer),
        "optimizer_sharding_type": sharding_type,
        "opt_param_scheduler": scheduler.state_dict(),
        "rng_state": _rng_sharded_object(_rng_state()),
        "consumed_samples": consumed_samples,
        "config": config_to_json(config),
    }, async_writer, retain)


def load_checkpoint(root: str, model, optimizer=None, scheduler=None, load_rng: bool = True,
                    iteration: Optional[int] = None,
                    ddp_model=None) -> Optional[Dict[str, Any]]:
    """Load the latest (or the given) checkpoint under ``root`` into the objects passed.

    ``model`` is the bare module; ``ddp_model`` its megatron DDP wrapper (needed to prime a
    distributed optimizer).

    Returns ``{"iteration", "consumed_samples", "config"}`` or None when ``root`` holds no
    checkpoint yet (a fresh run with --load == --save).
    """
    iteration = find_checkpoint(root, iteration)
    if iteration is None:
        return None
    path = checkpoint_dir(root, iteration)
    common = read_common_state(path)
    if optimizer is not None and not common.get("has_optimizer", True):
        raise CheckpointError(
            f"{path} holds model weights only (converted from Hugging Face?): resume it with "
            f"--finetune (or --no-load-optim)")
    same_layout = common.get("parallel_layout") == parallel_layout()
    sharding_type = common.get("optimizer_sharding_type", DP_RESHARDABLE)
    if optimizer is not None:
        saved_distributed = common.get("distributed_optimizer", uses_distributed_optimizer(
            optimizer))
        if saved_distributed != uses_distributed_optimizer(optimizer):
            raise CheckpointError(
                f"{path} was saved {'with' if saved_distributed else 'without'} "
                f"--use-distributed-optimizer and this run is "
                f"{'without' if saved_distributed else 'with'} it: the optimizer states are "
                f"stored differently. Match the flag, or load the model alone with "
                f"--no-load-optim (fresh optimizer state, same iteration).")
        if saved_distributed and not same_layout and sharding_type == DP_RESHARDABLE:
            raise CheckpointError(
                f"{path} was saved with tensor/pipeline parallel sizes "
                f"{common.get('parallel_layout')} and this run uses {parallel_layout()}: the "
                f"distributed optimizer's state was saved in the format that reshards over data "
                f"parallelism only (save with --dist-ckpt-optim-fully-reshardable to change "
                f"layouts later). "
                f"Load the model alone with --no-load-optim (fresh optimizer state, same "
                f"iteration) or --finetune.")
    model_state = model.sharded_state_dict()
    request = {"model": model_state}
    if optimizer is not None:
        prime_distributed_optimizer(optimizer, ddp_model)
        request["optimizer"] = optimizer.sharded_state_dict(
            model_state, is_loading=True, metadata=optimizer_metadata(optimizer, sharding_type))
    if load_rng and same_layout:
        request["rng_state"] = _rng_sharded_object(_rng_state())
    loaded = load_sharded_state(request, path)
    # Copies into parameters (and the distributed optimizer's views of them) are not training.
    with torch.no_grad():
        model.load_state_dict(loaded["model"])
        if optimizer is not None:
            load_optimizer_state(optimizer, loaded["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in common:
        # megatron's load_state_dict adds the saved step count to the current one: right for
        # a fresh scheduler only, so a rollback inside a run starts it from 0 first.
        scheduler.num_steps = 0
        try:
            scheduler.load_state_dict(common["opt_param_scheduler"])
        except AssertionError as exc:  # megatron's check that the schedule flags are unchanged
            raise CheckpointError(
                f"{path}: this run's learning-rate schedule differs from the checkpoint's "
                f"({exc}). Pass --override-opt_param-scheduler to follow this run's flags, or "
                f"--use-checkpoint-opt_param-scheduler to keep the checkpoint's schedule "
                f"(note that --lr-decay-iters defaults to --train-iters).") from exc
    if "rng_state" in loaded:
        _set_rng_state(loaded["rng_state"])
    return {"iteration": common["iteration"], "consumed_samples": common["consumed_samples"],
            "config": json.loads(common["config"])}
