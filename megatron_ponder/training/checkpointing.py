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
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_ponder.mcore.optimizer_state import (
    DP_RESHARDABLE, FULLY_RESHARDABLE, load_optimizer_state, materialize_adam_state,
    optimizer_metadata, prime_distributed_optimizer, uses_distributed_optimizer)
from megatron_ponder.training.exit import FatalRunError
from megatron_ponder.training.integrity import (MANIFEST_FILE, check_pickles, has_manifest,
                                               verify_checkpoint, write_manifest)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 2
MANIFEST_CHECKPOINT_VERSION = 2  # checkpoints from this version on always have a manifest


class CheckpointError(FatalRunError):
    """A checkpoint that cannot be loaded; the message is one line saying which and why."""


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def saved_iterations(root: str) -> List[int]:
    """Iterations with a directory under ``root`` (complete or not), newest first."""
    if not os.path.isdir(root):
        return []
    found = [int(name[5:]) for name in os.listdir(root)
             if name.startswith("iter_") and name[5:].isdigit()
             and os.path.isdir(os.path.join(root, name))]
    return sorted(found, reverse=True)


def _log(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


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
          async_writer: Optional[AsyncCheckpointWriter] = None,
          retain: Optional[int] = None) -> str:
    """Write ``state`` (plus the fields every checkpoint has) as iteration ``iteration`` and,
    only once every rank has finished, write its manifest and point the tracker file at it
    (with ``async_writer``: when the writer's ``poll`` finds the background save complete on
    every rank); then, with ``retain``, delete all but the newest ``retain`` checkpoints."""
    path = checkpoint_dir(root, iteration)
    _VERIFIED_IN_THIS_PROCESS.discard(path)
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
        write_manifest(path)  # collective: the files are split over the ranks
        if dist.get_rank() == 0:
            _write_tracker_atomically(root, iteration)
            if retain:
                _apply_retention(root, iteration, retain)
        dist.barrier()

    if async_writer is None:
        dist_checkpointing.save(state, path)
        point_tracker_at_it()
    else:
        request = dist_checkpointing.save(state, path, async_sharded_save=True)
        request.add_finalize_fn(point_tracker_at_it)  # after megatron's own (the metadata)
        async_writer.schedule(request, iteration)
    return path


def _apply_retention(root: str, newest: int, retain: int) -> None:
    """--save-retain: keep the ``retain`` newest checkpoints up to ``newest`` (which has just
    been completed, so the newest complete one is never deleted). Directories past ``newest``
    (damaged ones a resumed run fell back from) are left for the run to overwrite."""
    problem = check_pickles(checkpoint_dir(root, newest))
    if problem is not None:  # the new one does not read back: keep the older ones
        _log(f"not applying --save-retain: the new checkpoint does not read back: {problem}")
        return
    older = [i for i in saved_iterations(root) if i <= newest][retain:]
    for iteration in older:
        shutil.rmtree(checkpoint_dir(root, iteration), ignore_errors=True)
    if older:
        _log(f"--save-retain {retain}: deleted checkpoints at iterations "
             f"{', '.join(map(str, sorted(older)))}")


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
    }, async_writer, retain)


def save_model_only_checkpoint(root: str, model, config, iteration: int = 0) -> str:
    """A checkpoint with weights and config but no optimizer/scheduler state (for example
    converted from a Hugging Face folder); continue pretraining from it with --finetune."""
    return _save(root, iteration, {"model": model.sharded_state_dict(), "consumed_samples": 0,
                                   "config": config_to_json(config), "has_optimizer": False})


def _layout() -> Dict[str, int]:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size()}


def _verified(root: str, iteration: int) -> Optional[str]:
    """Collective: None if the checkpoint is complete and intact (or, saved before manifests
    existed, at least present), else one line naming the file and the problem."""
    path = checkpoint_dir(root, iteration)
    if not os.path.isdir(path):
        return f"{path}: missing"
    if path in _VERIFIED_IN_THIS_PROCESS:  # e.g. read_checkpoint_config, then load_checkpoint
        return None
    problem = verify_checkpoint(path)
    if problem is None and not has_manifest(path):
        # Saved before manifests existed (version 1), or its manifest was lost.
        common = torch.load(os.path.join(path, "common.pt"), map_location="cpu",
                            weights_only=True)  # check_pickles loaded it already
        if common.get("checkpoint_version", 1) >= MANIFEST_CHECKPOINT_VERSION:
            problem = f"{os.path.join(path, MANIFEST_FILE)}: missing"
    if problem is None:
        _VERIFIED_IN_THIS_PROCESS.add(path)
    return problem


_VERIFIED_IN_THIS_PROCESS: set = set()


def find_checkpoint(root: str, iteration: Optional[int] = None) -> Optional[int]:
    """Collective (every rank gets the same answer): the iteration to load from ``root``.

    With ``iteration`` (--ckpt-step) that checkpoint or a CheckpointError of one line. Else the
    one the tracker names, or, if it is damaged or incomplete, the newest older one that is
    intact (each damaged one reported in one line, the fallback logged). Without a tracker
    (deleted) the newest checkpoint with an intact manifest. None when ``root`` holds nothing.
    """
    if iteration is not None:
        path = checkpoint_dir(root, iteration)
        if not os.path.isdir(path):
            saved = [f"iter_{i:07d}" for i in sorted(saved_iterations(root))]
            raise CheckpointError(f"no checkpoint for iteration {iteration} ({path}); "
                                  f"{root} holds: {', '.join(saved) or 'none'}")
        problem = _verified(root, iteration)
        if problem is not None:
            raise CheckpointError(f"checkpoint at iteration {iteration} is damaged: {problem}")
        _note_unverified(path)
        return iteration
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        try:
            latest, tracker_problem = read_latest_iteration(root), None
        except CheckpointError as exc:
            latest, tracker_problem = None, str(exc)
        saved = saved_iterations(root)
        with_manifest = [i for i in saved if has_manifest(checkpoint_dir(root, i))]
        pre_manifest = [i for i in saved if i not in with_manifest
                        and _saved_before_manifests(checkpoint_dir(root, i))]
        plan = (latest, tracker_problem, saved, with_manifest, pre_manifest)
    else:
        plan = None
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    latest, tracker_problem, saved, with_manifest, pre_manifest = plan
    if latest is None:
        if not saved:
            return None
        if not with_manifest and not pre_manifest and tracker_problem is None:
            # No save ever completed (the first one moves the tracker, after the manifest):
            # these are interrupted saves, say a job killed inside its first save.
            _log(f"no complete checkpoint in {root} (no {TRACKER_FILE}; "
                 f"{', '.join(f'iter_{i:07d}' for i in sorted(saved))} never completed): "
                 f"starting from scratch")
            return None
        if not with_manifest:
            raise CheckpointError(
                f"{root} holds {len(saved)} checkpoint directories but "
                f"{tracker_problem or f'no {TRACKER_FILE}'}, and none has a manifest to show it "
                f"is complete: pick one with --ckpt-step")
        _log(f"{tracker_problem or f'{os.path.join(root, TRACKER_FILE)} is missing'}: "
             f"looking for the newest complete checkpoint in {root}")
        candidates = with_manifest
    else:
        # Directories past the tracker are interrupted saves; older ones were complete.
        candidates = [latest] + [i for i in saved if i < latest]
    for position, candidate in enumerate(candidates):
        problem = _verified(root, candidate)
        if problem is not None:
            _log(f"checkpoint at iteration {candidate} is damaged: {problem}")
            continue
        if position > 0:
            _log(f"falling back to the checkpoint at iteration {candidate}: the newest complete "
                 f"one (the newer ones are damaged, see above)")
        _note_unverified(checkpoint_dir(root, candidate))
        return candidate
    raise CheckpointError(f"no intact checkpoint in {root}: every one is damaged (see above)")


def _saved_before_manifests(path: str) -> bool:
    """Whether ``path`` looks like a complete checkpoint of the version before manifests (its
    save finished: ``.metadata`` is there; ``common.pt`` says version 1)."""
    if not os.path.isfile(os.path.join(path, ".metadata")):
        return False
    try:
        common = torch.load(os.path.join(path, "common.pt"), map_location="cpu",
                            weights_only=True)
    except Exception:  # unreadable: not a complete checkpoint of any version
        return False
    return common.get("checkpoint_version", 1) < MANIFEST_CHECKPOINT_VERSION


def _note_unverified(path: str) -> None:
    if not has_manifest(path):
        _log(f"{path} has no manifest (saved before checkpoint manifests existed): loading it "
             f"unverified")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


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
    try:
        common = dist_checkpointing.load_common_state_dict(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read ({_first_line(exc)})") from exc
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
    try:
        loaded = dist_checkpointing.load(request, path)
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged checkpoint saved before manifests existed
        raise CheckpointError(f"{path}: cannot be loaded ({_first_line(exc)})") from exc
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
