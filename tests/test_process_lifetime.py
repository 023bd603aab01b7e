"""Helper processes of a process that imported megatron_ponder end with it, even when it is
killed with SIGKILL (it cannot stop them itself): forked children and multiprocessing children
started with spawn (megatron-core's checkpoint writers and write-results manager)."""

import os
import signal
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

PARENT = r"""
import multiprocessing, os, sys, time
import megatron_ponder

def idle(started):
    started.set()
    time.sleep(600)

if __name__ == "__main__":
    forked = os.fork()
    if forked == 0:
        time.sleep(600)
        os._exit(0)
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    spawned = context.Process(target=idle, args=(started,))
    spawned.start()
    started.wait()  # it has imported megatron_ponder (again)
    print(forked, spawned.pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_children_end_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = dict(os.environ, PYTHONPATH=REPO)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2 and all(_alive(pid) for pid in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children)
    finally:
        parent.kill()
        for pid in children if "children" in dir() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
