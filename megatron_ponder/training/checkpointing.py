"""Checkpoints through megatron-core dist_checkpointing, in Megatron-LM's directory layout.

    <root>/latest_checkpointed_iteration.txt   (written atomically, after the save completed)
    <root>/iter_0000100/                        (a dist_checkpointing directory)

A checkpoint holds the model, optimizer, LR scheduler, RNG states, iteration and consumed
samples, plus the run's config (so tools can rebuild the model). Any tensor/pipeline layout can
load any other's model (dist_checkpointing reshards; the sharded keys are global: layer numbers
count across pipeline stages, tensor-parallel shards carry their offsets). RNG states are
restored only on the same layout. The distributed optimizer's state reloads at another
tensor/pipeline layout only if saved with --dist-ckpt-optim-fully-reshardable (its default
format reshards over data parallelism only, as in Megatron-LM).
"""

import dataclasses
import json
import os
import random
import shutil
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_ponder.training.optimizer_state import (
    DP_RESHARDABLE, FULLY_RESHARDABLE, keep_adam_step_on_reshardable_load,
    materialize_adam_state, optimizer_metadata, prime_distributed_optimizer,
    restore_adam_steps, restore_zero_common_step, uses_distributed_optimizer)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def read_latest_iteration(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path} should hold an iteration number, found {text!r}")
    return int(text)


def _write_tracker_atomically(root: str, iteration: int) -> None:
    tmp = os.path.join(root, TRACKER_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, TRACKER_FILE))


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


def config_to_json(config) -> str:
    def encode(value):
        if isinstance(value, torch.dtype):
            return str(value).replace("torch.", "")
        raise TypeError(f"cannot serialise {type(value)}")
    return json.dumps(dataclasses.asdict(config), default=encode, sort_keys=True)


class AsyncCheckpointWriter:
    """--async-save: checkpoints written by background processes while training goes on.

    megatron-core's async save stages the tensors (a copy to host memory on GPU; on CPU the
    forked writer's copy-on-write snapshot), returns at once and writes in a child process.
    ``poll`` (every iteration, on every rank: a collective while saves are pending) finishes
    the saves all ranks have completed: metadata, then the tracker file, so the tracker never
    names a checkpoint that is not complete.
    """

    def __init__(self):
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self._queue = AsyncCallsQueue()
        self._pending: list = []  # iterations being written, oldest first

    def schedule(self, request, iteration: int) -> None:
        self._queue.schedule_async_request(request)
        self._pending.append(iteration)

    def poll(self, blocking: bool = False) -> list:
        """Iterations whose save just completed (tracker updated); ``blocking``: wait for all."""
        done = self._queue.maybe_finalize_async_calls(blocking=blocking)
        finished, self._pending = self._pending[:len(done)], self._pending[len(done):]
        return finished


def _save(root: str, iteration: int, state: Dict[str, Any],
          async_writer: Optional[AsyncCheckpointWriter] = None) -> str:
    """Write ``state`` (plus the fields every checkpoint has) as iteration ``iteration`` and,
    only once every rank has finished, point the tracker file at it (with ``async_writer``:
    when the writer's ``poll`` finds the background save complete on every rank)."""
    path = checkpoint_dir(root, iteration)
    if dist.get_rank() == 0:
        # A directory here that the tracker does not name is an interrupted save: replace it.
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.makedirs(path)
    dist.barrier()
    state.update(iteration=iteration, parallel_layout=_layout(),
                 checkpoint_version=CHECKPOINT_VERSION)

    def point_tracker_at_it():
        dist.barrier()
        if dist.get_rank() == 0:
            _write_tracker_atomically(root, iteration)
        dist.barrier()

    if async_writer is None:
        dist_checkpointing.save(state, path)
        point_tracker_at_it()
    else:
        request = dist_checkpointing.save(state, path, async_sharded_save=True)
        request.add_finalize_fn(point_tracker_at_it)  # after megatron's own (the metadata)
        async_writer.schedule(request, iteration)
    return path


def save_checkpoint(root: str, iteration: int, model, optimizer, scheduler,
                    consumed_samples: int, config, optim_fully_reshardable: bool = False,
                    async_writer: Optional[AsyncCheckpointWriter] = None) -> str:
    """Model, optimizer, scheduler, RNG, progress and config: everything a resume needs.

    ``optim_fully_reshardable`` picks the distributed optimizer's format (see FULLY_RESHARDABLE);
    with ``async_writer`` the files are written in the background (see AsyncCheckpointWriter).
    """
    materialize_adam_state(optimizer)
    sharding_type = FULLY_RESHARDABLE if optim_fully_reshardable else DP_RESHARDABLE
    model_state = model.sharded_state_dict()
    return _save(root, iteration, {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(
            model_state, metadata=optimizer_metadata(optimizer, sharding_type)),
        "distributed_optimizer": uses_distributed_optimizer(optimizer),
        "optimizer_sharding_type": sharding_type,
        "opt_param_scheduler": scheduler.state_dict(),
        "rng_state": _rng_sharded_object(_rng_state()),
        "consumed_samples": consumed_samples,
        "config": config_to_json(config),
    }, async_writer)


def save_model_only_checkpoint(root: str, model, config, iteration: int = 0) -> str:
    """A checkpoint with weights and config but no optimizer/scheduler state (for example
    converted from a Hugging Face folder); continue pretraining from it with --finetune."""
    return _save(root, iteration, {"model": model.sharded_state_dict(), "consumed_samples": 0,
                                   "config": config_to_json(config), "has_optimizer": False})


def _layout() -> Dict[str, int]:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size()}


def load_checkpoint(root: str, model, optimizer=None, scheduler=None, load_rng: bool = True,
                    iteration: Optional[int] = None,
                    ddp_model=None) -> Optional[Dict[str, Any]]:
    """Load the latest (or the given) checkpoint under ``root`` into the objects passed.

    ``model`` is the bare module; ``ddp_model`` its megatron DDP wrapper (needed to prime a
    distributed optimizer).

    Returns ``{"iteration", "consumed_samples", "config"}`` or None when ``root`` holds no
    checkpoint yet (a fresh run with --load == --save).
    """
    explicit = iteration is not None
    if iteration is None:
        iteration = read_latest_iteration(root)
        if iteration is None:
            return None
    path = checkpoint_dir(root, iteration)
    if not os.path.isdir(path):
        if explicit:
            saved = sorted(name for name in os.listdir(root) if name.startswith("iter_")) \
                if os.path.isdir(root) else []
            raise CheckpointError(f"no checkpoint for iteration {iteration} ({path}); "
                                  f"{root} holds: {', '.join(saved) or 'none'}")
        raise CheckpointError(f"checkpoint {path} named by {TRACKER_FILE} does not exist")
    common = dist_checkpointing.load_common_state_dict(path)
    if optimizer is not None and not common.get("has_optimizer", True):
        raise CheckpointError(
            f"{path} holds model weights only (converted from Hugging Face?): resume it with "
            f"--finetune (or --no-load-optim)")
    same_layout = common.get("parallel_layout") == _layout()
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
                f"{common.get('parallel_layout')} and this run uses {_layout()}: the distributed "
                f"optimizer's state was saved in the format that reshards over data parallelism "
                f"only (save with --dist-ckpt-optim-fully-reshardable to change layouts later). "
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
    loaded = dist_checkpointing.load(request, path)
    # Copies into parameters (and the distributed optimizer's views of them) are not training.
    with torch.no_grad():
        model.load_state_dict(loaded["model"])
        if optimizer is not None:
            restore_zero_common_step(optimizer, loaded["optimizer"])
            with keep_adam_step_on_reshardable_load(optimizer):
                optimizer.load_state_dict(loaded["optimizer"])
            restore_adam_steps(optimizer, loaded["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in common:
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
