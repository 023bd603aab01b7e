"""Which checkpoint to load: the one the tracker names, verified against its manifest, or the
newest intact older one when it is damaged (see ``integrity``)."""

import os
from typing import Optional

import torch
import torch.distributed as dist

from megatron_ponder.checkpoint.integrity import MANIFEST_FILE, has_manifest, verify_checkpoint
from megatron_ponder.checkpoint.layout import (MANIFEST_CHECKPOINT_VERSION, TRACKER_FILE,
                                               CheckpointError, checkpoint_dir,
                                               read_latest_iteration, saved_iterations)
from megatron_ponder.log import get_logger


logger = get_logger(__name__)


def forget_verified(path: str) -> None:
    """``path`` is being rewritten: verify it again before the next load."""
    _VERIFIED.discard(path)


def checkpoint_problem(root: str, iteration: int) -> Optional[str]:
    """Collective: None if the checkpoint is complete and intact (or, saved before manifests
    existed, at least present), else one line naming the file and the problem."""
    path = checkpoint_dir(root, iteration)
    if not os.path.isdir(path):
        return f"{path}: missing"
    if path in _VERIFIED:  # e.g. read_saved_config, then a load
        return None
    problem = verify_checkpoint(path)
    if problem is None and not has_manifest(path):
        # Saved before manifests existed (version 1), or its manifest was lost.
        common = torch.load(os.path.join(path, "common.pt"), map_location="cpu",
                            weights_only=True)  # check_pickles loaded it already
        if common.get("checkpoint_version", 1) >= MANIFEST_CHECKPOINT_VERSION:
            problem = f"{os.path.join(path, MANIFEST_FILE)}: missing"
    if problem is None:
        _VERIFIED.add(path)
    return problem


_VERIFIED: set = set()


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
        problem = checkpoint_problem(root, iteration)
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
            logger.info(f"no complete checkpoint in {root} (no {TRACKER_FILE}; "
                          f"{', '.join(f'iter_{i:07d}' for i in sorted(saved))} never "
                          f"completed): starting from scratch")
            return None
        if not with_manifest:
            raise CheckpointError(
                f"{root} holds {len(saved)} checkpoint directories but "
                f"{tracker_problem or f'no {TRACKER_FILE}'}, and none has a manifest to show it "
                f"is complete: pick one with --ckpt-step")
        missing = f"{os.path.join(root, TRACKER_FILE)} is missing"
        logger.info(f"{tracker_problem or missing}: looking for the newest complete "
                      f"checkpoint in {root}")
        candidates = with_manifest
    else:
        # Directories past the tracker are interrupted saves; older ones were complete.
        candidates = [latest] + [i for i in saved if i < latest]
    for position, candidate in enumerate(candidates):
        problem = checkpoint_problem(root, candidate)
        if problem is not None:
            logger.info(f"checkpoint at iteration {candidate} is damaged: {problem}")
            continue
        if position > 0:
            logger.info(f"falling back to the checkpoint at iteration {candidate}: the newest "
                          f"complete one (the newer ones are damaged, see above)")
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
        logger.info(f"{path} has no manifest (saved before checkpoint manifests existed): "
                      f"loading it unverified")
