"""Writing and reading checkpoint directories with megatron-core's dist_checkpointing: the save
protocol every checkpoint follows (directory, manifest, then the tracker), the run config a
checkpoint stores, and a model's weights alone (conversion, inference). What a training
checkpoint holds besides (optimizer, scheduler, RNG) is ``training.checkpointing``'s business.
"""

import dataclasses
import errno
import json
import os
import shutil
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from megatron_ponder.checkpoint.discovery import find_checkpoint, forget_verified, logger
from megatron_ponder.checkpoint.integrity import check_pickles, first_line, write_manifest
from megatron_ponder.checkpoint.layout import (CHECKPOINT_VERSION, TRACKER_FILE,
                                               CheckpointError, checkpoint_dir,
                                               read_latest_iteration, saved_iterations,
                                               write_tracker_atomically)


def config_to_json(config) -> str:
    """A config dataclass (sections of dataclasses) as the JSON a checkpoint stores."""
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


def save_state(root: str, iteration: int, state: Dict[str, Any],
               async_writer: Optional[AsyncCheckpointWriter] = None,
               retain: Optional[int] = None) -> str:
    """Write ``state`` (plus the fields every checkpoint has) as iteration ``iteration`` and,
    only once every rank has finished, write its manifest and point the tracker file at it
    (with ``async_writer``: when the writer's ``poll`` finds the background save complete on
    every rank); then, with ``retain``, delete all but the newest ``retain`` checkpoints."""
    path = checkpoint_dir(root, iteration)
    forget_verified(path)
    if dist.get_rank() == 0:
        # A directory here that the tracker does not name is an interrupted save: replace it.
        if os.path.isdir(path):
            shutil.rmtree(path)
        _warn_if_the_last_size_does_not_fit(root, iteration)
        os.makedirs(path)
    dist.barrier()
    state.update(iteration=iteration, parallel_layout=parallel_layout(),
                 checkpoint_version=CHECKPOINT_VERSION)

    def point_tracker_at_it():
        dist.barrier()
        write_manifest(path)  # collective: the files are split over the ranks
        if dist.get_rank() == 0:
            write_tracker_atomically(root, iteration)
            if retain:
                _apply_retention(root, iteration, retain)
        dist.barrier()

    if async_writer is None:
        try:
            dist_checkpointing.save(state, path)
            point_tracker_at_it()
        except BaseException as exc:  # torch's CheckpointException is no Exception
            if not _is_disk_full(exc, root):
                raise
            raise _disk_full(root, iteration) from exc
    else:
        request = dist_checkpointing.save(state, path, async_sharded_save=True)
        request.add_finalize_fn(point_tracker_at_it)  # after megatron's own (the metadata)
        async_writer.schedule(request, iteration)
    return path


def _directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def _newest_complete(root: str, before: int) -> Optional[int]:
    try:
        latest = read_latest_iteration(root)
    except CheckpointError:
        return None
    return latest if latest is not None and latest < before else None


def _warn_if_the_last_size_does_not_fit(root: str, iteration: int) -> None:
    """Say so before a save when the newest complete checkpoint would no longer fit."""
    previous = _newest_complete(root, iteration)
    if previous is None:
        return
    needed = _directory_bytes(checkpoint_dir(root, previous))
    free = shutil.disk_usage(root).free
    if free < needed:
        logger.info(f"warning: {root} has {free / 2**20:.1f} MiB free and the checkpoint of "
                    f"iteration {previous} took {needed / 2**20:.1f} MiB: the save of "
                    f"iteration {iteration} may not fit")


_FULL_BELOW_BYTES = 2**20


def _is_disk_full(exc: BaseException, root: str) -> bool:
    """Whether a save failed with ``exc`` for want of space: ENOSPC in it or its cause
    (megatron-core's writer processes report it as a RuntimeError carrying the OSError's
    text), or, as torch.save reports it without the errno, less than a MiB left on ``root``'s
    filesystem after the failure."""
    try:
        if shutil.disk_usage(root).free < _FULL_BELOW_BYTES:
            return True
    except OSError:
        pass
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if os.strerror(errno.ENOSPC) in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full(root: str, iteration: int) -> CheckpointError:
    """The partial checkpoint of ``iteration`` removed, one line saying where things stand."""
    path = checkpoint_dir(root, iteration)
    shutil.rmtree(path, ignore_errors=True)
    free = shutil.disk_usage(root).free if os.path.isdir(root) else 0
    newest = _newest_complete(root, iteration)
    kept = (f"the newest complete checkpoint is iteration {newest} "
            f"({checkpoint_dir(root, newest)})" if newest is not None
            else "no complete checkpoint there yet")
    return CheckpointError(
        f"no space left on the device of {root} while saving iteration {iteration} "
        f"({free / 2**20:.1f} MiB free); the partial {os.path.basename(path)} was removed, "
        f"{kept}: free space (or --save elsewhere, --save-retain N) and resume")


def _apply_retention(root: str, newest: int, retain: int) -> None:
    """--save-retain: keep the ``retain`` newest checkpoints up to ``newest`` (which has just
    been completed, so the newest complete one is never deleted). Directories past ``newest``
    (damaged ones a resumed run fell back from) are left for the run to overwrite."""
    problem = check_pickles(checkpoint_dir(root, newest))
    if problem is not None:  # the new one does not read back: keep the older ones
        logger.info(f"not applying --save-retain: the new checkpoint does not read back: "
                      f"{problem}")
        return
    older = [i for i in saved_iterations(root) if i <= newest][retain:]
    for iteration in older:
        shutil.rmtree(checkpoint_dir(root, iteration), ignore_errors=True)
    if older:
        logger.info(f"--save-retain {retain}: deleted checkpoints at iterations "
                      f"{', '.join(map(str, sorted(older)))}")


def save_model_only_checkpoint(root: str, model, config, iteration: int = 0) -> str:
    """A checkpoint with weights and config but no optimizer/scheduler state (for example
    converted from a Hugging Face folder); continue pretraining from it with --finetune."""
    return save_state(root, iteration, {"model": model.sharded_state_dict(),
                                        "consumed_samples": 0, "config": config_to_json(config),
                                        "has_optimizer": False})


def parallel_layout() -> Dict[str, int]:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size()}


def read_common_state(path: str) -> Dict[str, Any]:
    """The checkpoint's non-sharded part (iteration, config, flags), or a CheckpointError."""
    try:
        return dist_checkpointing.load_common_state_dict(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read ({first_line(exc)})") from exc


def load_sharded_state(request: Dict[str, Any], path: str) -> Dict[str, Any]:
    """``dist_checkpointing.load`` of ``request``; a failure (a damaged checkpoint saved before
    manifests existed) becomes a CheckpointError of one line."""
    try:
        return dist_checkpointing.load(request, path)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be loaded ({first_line(exc)})") from exc


def _resolve(root: str, iteration: Optional[int]) -> int:
    found = find_checkpoint(root, iteration)  # verified; a damaged newest: the fallback
    if found is None:
        raise CheckpointError(f"no checkpoint in {root!r} (no {TRACKER_FILE})")
    return found


def read_saved_config(root: str, iteration: Optional[int] = None) -> dict:
    """The run config stored in a checkpoint (a plain dict of config sections)."""
    return json.loads(read_common_state(checkpoint_dir(root, _resolve(root, iteration)))["config"])


def load_model_weights(root: str, model, iteration: Optional[int] = None) -> int:
    """The checkpoint's model weights into ``model`` (any saved layout; dist_checkpointing
    reshards); returns the iteration loaded."""
    iteration = _resolve(root, iteration)
    loaded = load_sharded_state({"model": model.sharded_state_dict()},
                                checkpoint_dir(root, iteration))
    with torch.no_grad():
        model.load_state_dict(loaded["model"])
    return iteration
