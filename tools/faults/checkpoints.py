"""Damaged checkpoints: the newest of four saved checkpoints truncated, bit-flipped or deleted in
part, the tracker deleted or garbled, a half-written save left beside it (the resumed job must
say so, fall back and finish like the reference); a damaged --ckpt-step and every checkpoint
damaged (a clean stop that changes nothing on disk).
"""

import os
import random
import shutil
from typing import Callable, Dict, Tuple

from megatron_ponder.checkpoint.layout import TRACKER_FILE
from tools.faults.harness import RESUMED, Outcome, Workspace, check_continued, clean_stop, \
    iteration_dirs, resume_flags


def _snapshot(folder: str) -> Dict[str, Tuple[int, int]]:
    """{relative path: (size, mtime)} of every file under ``folder``."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            status = os.stat(path)
            found[os.path.relpath(path, folder)] = (status.st_size, status.st_mtime_ns)
    return found


def _flip_bit(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))


def _largest_shard(path: str) -> str:
    shards = [name for name in os.listdir(path) if name.endswith(".distcp")]
    return os.path.join(path, max(shards, key=lambda n: os.path.getsize(os.path.join(path, n))))


def _checkpoints_until(ws: Workspace, name: str, last: int) -> str:
    """A copy of the reference's checkpoints as a job stopped after iteration ``last`` left
    them (tracker at ``last``)."""
    root = os.path.join(ws.folder(name), "ckpt")
    shutil.copytree(ws.reference().root, root)
    for directory in iteration_dirs(root):
        if int(directory[5:]) > last:
            shutil.rmtree(os.path.join(root, directory))
    with open(os.path.join(root, TRACKER_FILE), "w") as f:
        f.write(str(last))
    return root


def damage_fault(damage: Callable[[str, random.Random], str], falls_back_to: int,
                 expect_in_log: str):
    """Damage the newest of 4 saved checkpoints (``damage(iteration dir, rng)`` returns what
    it did), resubmit the job: it must report the damage, fall back to ``falls_back_to`` and
    finish exactly like the reference."""

    def inject(ws: Workspace, name: str) -> Outcome:
        root = _checkpoints_until(ws, name, 4)
        tried = damage(os.path.join(root, "iter_0000004"), ws.rng) + ", then resume"
        run = ws.pretrain(resume_flags(root))
        survived, lost, detail = check_continued(ws, root, run)
        resumed = RESUMED.search(run.stdout)
        if survived and (not resumed or int(resumed.group(1)) != falls_back_to):
            survived, detail = False, f"resumed at {resumed and resumed.group(1)}, expected " \
                                      f"{falls_back_to}"
        if survived and expect_in_log not in run.stdout:
            survived, detail = False, f"the log does not say {expect_in_log!r}"
        return Outcome(name, tried, survived, lost, detail)

    return inject


def truncate_shard(path, rng):
    shard = _largest_shard(path)
    os.truncate(shard, os.path.getsize(shard) // 2)
    return f"truncate {os.path.basename(shard)} of iteration 4 to half"


def flip_shard(path, rng):
    shard = _largest_shard(path)
    offset = rng.randrange(os.path.getsize(shard))
    _flip_bit(shard, offset)
    return f"flip a bit at byte {offset} of {os.path.basename(shard)} of iteration 4"


def truncate_metadata(path, rng):
    metadata = os.path.join(path, ".metadata")
    os.truncate(metadata, os.path.getsize(metadata) // 2)
    return "truncate .metadata of iteration 4 to half"


def flip_common(path, rng):
    common = os.path.join(path, "common.pt")
    offset = rng.randrange(os.path.getsize(common))
    _flip_bit(common, offset)
    return f"flip a bit at byte {offset} of common.pt of iteration 4"


def delete_shard(path, rng):
    shard = _largest_shard(path)
    os.remove(shard)
    return f"delete {os.path.basename(shard)} of iteration 4"


def delete_manifest(path, rng):
    os.remove(os.path.join(path, "manifest.json"))
    return "delete manifest.json of iteration 4"


def delete_tracker(path, rng):
    os.remove(os.path.join(os.path.dirname(path), TRACKER_FILE))
    return f"delete {TRACKER_FILE}"


def garbage_tracker(path, rng):
    with open(os.path.join(os.path.dirname(path), TRACKER_FILE), "w") as f:
        f.write("\x00\x13garbage")
    return f"overwrite {TRACKER_FILE} with garbage"


def half_written_save(path, rng):
    root = os.path.dirname(path)
    partial = os.path.join(root, "iter_0000005")
    os.makedirs(partial)
    with open(os.path.join(partial, "__0_0.distcp"), "wb") as f:
        f.write(os.urandom(1000))
    return "leave a half-written iter_0000005 next to a complete iteration 4"


def ckpt_step_damaged(ws: Workspace, name: str) -> Outcome:
    root = _checkpoints_until(ws, name, 4)
    shard = _largest_shard(os.path.join(root, "iter_0000003"))
    os.truncate(shard, 10)
    before = _snapshot(root)
    run = ws.pretrain(resume_flags(root, "--ckpt-step", "3"))
    survived, detail = clean_stop(run, "iteration 3 is damaged", os.path.basename(shard),
                                  "truncated")
    lost = _snapshot(root) != before
    if lost:
        survived, detail = False, "the failed run changed the checkpoint directory"
    return Outcome(name, "truncate a shard of iteration 3, resume with --ckpt-step 3", survived,
                   lost, detail)


def every_checkpoint_damaged(ws: Workspace, name: str) -> Outcome:
    root = _checkpoints_until(ws, name, 4)
    for directory in iteration_dirs(root):
        _flip_bit(_largest_shard(os.path.join(root, directory)), 100)
    before = _snapshot(root)
    run = ws.pretrain(resume_flags(root))
    survived, detail = clean_stop(run, "no intact checkpoint in", root)
    lost = _snapshot(root) != before
    if lost:
        survived, detail = False, "the failed run changed the checkpoint directory"
    return Outcome(name, "flip a bit in every saved checkpoint, resume", survived, lost, detail)
