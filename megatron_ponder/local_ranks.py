"""Run a function on N ranks of this machine, each a fresh process with torchrun's environment.

The project's one way to start ranks without torchrun, used wherever a piece of work needs
processes of its own: the library's measurements (``training/benchmark.py`` runs each
variant in a fresh process; the planner's ``--validate`` trains small models on several ranks in
``planning/memory_measured.py`` and ``planning/communication_measured.py``), the measuring tools
(``tools/measure_bubble.py``, ``tools/measure_recompute_memory.py``) and the multi-rank tests
(``tests/distributed.py``). It imports nothing of the project. Each rank is a fresh process
(forked from a server that has imported torch and megatron-core once) with the caller's
environment plus RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT and OMP_NUM_THREADS=1, so ``fn``
initialises torch.distributed exactly as under torchrun. Return values come back per
rank; an exception on any rank raises with that rank's traceback; a dead or hung rank fails
after ``timeout`` seconds.
"""

import multiprocessing
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from typing import Any, Callable, Dict, List, Optional


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Imported once by the fork server that starts every rank: each rank then begins with torch and
# megatron-core already imported (about 10 CPU-seconds per process otherwise). megatron_ponder
# itself is imported fresh in each rank, so environment variables it reads still take effect.
PRELOADED_MODULES = ("torch", "megatron.core", "megatron.core.models.gpt",
                     "megatron.core.optimizer", "megatron.core.distributed",
                     "megatron.core.pipeline_parallel", "megatron.core.dist_checkpointing")
_context = None


def _rank_context():
    """A fork-server context with ``PRELOADED_MODULES`` where ranks can reach the caller's
    output (Linux's /proc, see ``_write_where_the_caller_writes``), spawn elsewhere."""
    global _context
    if _context is None:
        if ("forkserver" in multiprocessing.get_all_start_methods()
                and os.path.isdir(f"/proc/{os.getpid()}/fd")):
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(list(PRELOADED_MODULES))
        else:
            _context = multiprocessing.get_context("spawn")
    return _context


def _write_where_the_caller_writes(caller_pid: int) -> None:
    """Point this process's stdout and stderr at the caller's current ones (a forked rank
    inherits the fork server's, fixed when it started; a capturing test runner or a log file
    of the caller must see the ranks' output, as with spawned ranks)."""
    for fd in (1, 2):
        try:
            target = os.open(f"/proc/{caller_pid}/fd/{fd}", os.O_WRONLY | os.O_APPEND)
        except OSError:  # e.g. a socket, which cannot be reopened: keep the inherited one
            continue
        os.dup2(target, fd)
        os.close(target)


def _worker(fn, rank, world_size, port, args, environment, caller_pid, queue):
    if caller_pid is not None:
        _write_where_the_caller_writes(caller_pid)
    # The fork server's environment is the one it started with: use the caller's current one.
    os.environ.clear()
    os.environ.update(environment)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch

    # OpenMP read OMP_NUM_THREADS when the fork server imported torch, before it was set here.
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        # Plain pickle bytes: torch's queue reducers would pass tensors through shared memory,
        # which breaks when this process exits before the parent reads them.
        queue.put((rank, True, pickle.dumps(fn(*args))))
    except BaseException:  # report everything, including SystemExit from argparse
        queue.put((rank, False, traceback.format_exc()))


def run_local_ranks(fn: Callable, world_size: int, *args, timeout: float = 300,
                    extra_env: Optional[Dict[str, str]] = None) -> List[Any]:
    """``fn(*args)`` on ``world_size`` ranks; returns the results ordered by rank.

    ``fn`` must be importable (a module-level function) and its result picklable;
    ``extra_env`` adds environment variables in every rank.
    """
    context = _rank_context()
    queue = context.Queue()
    port = _free_port()
    environment = dict(os.environ)
    environment["OMP_NUM_THREADS"] = "1"
    environment.update(extra_env or {})
    caller_pid = os.getpid() if context.get_start_method() == "forkserver" else None
    processes = [context.Process(target=_worker,
                                 args=(fn, rank, world_size, port, args, environment,
                                       caller_pid, queue))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    results, failures = {}, []
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size and not failures:
            try:
                rank, ok, value = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(processes)
                        if p.exitcode not in (None, 0) and r not in results]
                if dead:
                    failures.append(f"ranks {dead} died (exit codes "
                                    f"{[processes[r].exitcode for r in dead]}) without a result")
                elif time.monotonic() > deadline:
                    failures.append(f"timed out after {timeout}s waiting for ranks "
                                    f"{sorted(set(range(world_size)) - set(results))}")
                continue
            if ok:
                results[rank] = pickle.loads(value)
            else:
                failures.append(f"rank {rank} failed:\n{value}")
    finally:
        for process in processes:
            process.join(timeout=30 if not failures else 1)
            if process.is_alive():
                process.kill()
    if failures:
        raise AssertionError("\n".join(failures))
    return [results[rank] for rank in range(world_size)]
