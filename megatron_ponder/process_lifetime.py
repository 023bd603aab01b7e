"""Helper processes end with the process that started them.

A rank of a run starts helpers: megatron-core's checkpoint writers (forked) and the
multiprocessing manager behind its write-results queue (spawned), data-loader workers. Killed
with SIGKILL, the rank cannot stop them, and the spawned manager would wait, idle, forever.
``tie_children_to_their_parents`` (called when the package is imported) asks Linux to kill,
with SIGKILL, every such process when the process that started it ends: each child forked by a
process that imported the package, each multiprocessing child spawned by one (it imports the
package again), and each rank torchrun starts (its agent gone, the job is gone).
"""

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have ``sig`` sent to this process when its parent ends (Linux only; else nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: nothing to do
        pass


def _is_spawned_child() -> bool:
    """Whether this process is a multiprocessing child started with spawn: its command line
    says so (``sys.argv`` is the parent's by the time the package is imported again)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            arguments = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "--multiprocessing-fork" in arguments


def tie_children_to_their_parents() -> None:
    if _is_spawned_child() or "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    os.register_at_fork(after_in_child=die_with_parent)
