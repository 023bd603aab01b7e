"""A full disk during a save: --save on a tmpfs with room for one checkpoint and a half."""

import os
import shutil
import subprocess

from megatron_ponder.checkpoint.layout import checkpoint_dir
from tools.faults.harness import Outcome, Workspace, check_continued, clean_stop, \
    iteration_dirs, resume_flags, tracked_iteration


def _disk_bytes(path: str) -> int:
    """Bytes the files under ``path`` occupy on disk (whole blocks)."""
    return sum(os.stat(os.path.join(parent, n)).st_blocks * 512
               for parent, _, names in os.walk(path) for n in names)


def disk_full(ws: Workspace, name: str) -> Outcome:
    """--save on a filesystem with room for one checkpoint and a half (a tmpfs mounted for it:
    needs root). The save of iteration 2 must stop the run with one line naming the directory
    and the newest complete checkpoint, after a warning that it may not fit, and leave no
    partial directory; the checkpoints moved to a larger disk, the job resumes exactly."""
    reference = ws.reference()
    size = _disk_bytes(checkpoint_dir(reference.root, 1)) * 3 // 2 + 64 * 1024
    disk = ws.folder(name, "disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", disk],
                             capture_output=True, text=True)
    tried = f"--save on a {size // 1024} KiB filesystem (room for 1.5 checkpoints)"
    if mounted.returncode != 0:
        return Outcome(name, tried, False, False, "could not mount a tmpfs (needs root): "
                       + (mounted.stderr.strip() or "mount failed"), injected=False)
    root = os.path.join(disk, "ckpt")
    try:
        run = ws.pretrain(resume_flags(root))
        survived, detail = clean_stop(run, "no space left", root, "iter_0000002 was removed",
                                      "newest complete checkpoint is iteration 1")
        if survived and "may not fit" not in run.stdout:
            survived, detail = False, "no warning before the save that did not fit"
        lost = tracked_iteration(root) != "1" or iteration_dirs(root) != ["iter_0000001"]
        if lost:
            survived, detail = False, (f"left checkpoints {iteration_dirs(root)}, tracker "
                                       f"{tracked_iteration(root)}")
        moved = os.path.join(ws.folder(name), "ckpt")
        shutil.copytree(root, moved)
    finally:
        subprocess.run(["umount", disk], capture_output=True)
    if survived:
        survived, lost, resumed = check_continued(ws, moved, ws.pretrain(resume_flags(moved)))
        detail = f"{detail}; moved to a larger disk: {resumed}"
    return Outcome(name, tried + ", then resumed elsewhere", survived, lost, detail)
