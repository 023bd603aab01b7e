"""Run a function on N local gloo ranks, each in a fresh process with torchrun's environment.

Used by the multi-rank tests (tests/distributed.py) and the measurement tools
(tools/measure_bubble.py, tools/measure_recompute_memory.py). Each rank is a spawned process
with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set, so code under test initialises
torch.distributed exactly as under torchrun. Return values come back per rank; an exception on
any rank raises with that rank's traceback; a dead or hung rank fails after ``timeout`` seconds.
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


def _worker(fn, rank, world_size, port, args, extra_env, queue):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", **extra_env)
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
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker,
                                 args=(fn, rank, world_size, port, args, extra_env or {}, queue))
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
