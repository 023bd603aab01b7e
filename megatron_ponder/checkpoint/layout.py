"""Where a checkpoint's files are: Megatron-LM's directory layout.

    <root>/latest_checkpointed_iteration.txt   (written atomically, after the save completed)
    <root>/iter_0000100/                        (a dist_checkpointing directory)
"""

import os
from typing import List, Optional

from megatron_ponder.errors import FatalRunError

TRACKER_FILE = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 2
MANIFEST_CHECKPOINT_VERSION = 2  # checkpoints from this version on always have a manifest


class CheckpointError(FatalRunError):
    """A checkpoint that cannot be loaded; the message is one line saying which and why."""


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def is_checkpoint_root(path: str) -> bool:
    """Whether ``path`` is a training checkpoint directory (``--save`` of a run), told by its
    tracker file (a Hugging Face folder has none)."""
    return os.path.isfile(os.path.join(path, TRACKER_FILE))


def saved_iterations(root: str) -> List[int]:
    """Iterations with a directory under ``root`` (complete or not), newest first."""
    if not os.path.isdir(root):
        return []
    found = [int(name[5:]) for name in os.listdir(root)
             if name.startswith("iter_") and name[5:].isdigit()
             and os.path.isdir(os.path.join(root, name))]
    return sorted(found, reverse=True)


def read_latest_iteration(root: str) -> Optional[int]:
    """The iteration the tracker file names, None without a tracker."""
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path} should hold an iteration number, found {text!r}")
    return int(text)


def write_tracker_atomically(root: str, iteration: int) -> None:
    tmp = os.path.join(root, TRACKER_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, TRACKER_FILE))
