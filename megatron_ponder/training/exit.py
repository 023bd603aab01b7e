"""When a run stops early: Megatron-LM's --exit-interval, --exit-duration-in-mins and
--exit-signal-handler.

Long jobs live under scheduler time limits and preemption. Each condition is checked after an
iteration; the trainer then saves a checkpoint (with --save) and leaves the loop, so a resubmitted
job resumes exactly there. Duration and signal are per-process observations, so every rank joins
one MAX all-reduce and all of them stop after the same iteration (a rank that stopped alone would
leave the others waiting in the next collective).
"""

import signal
import time
from typing import Optional

import torch
import torch.distributed as dist

from megatron_ponder.devices import default_device


class ExitPolicy:
    """Usage: ``with ExitPolicy(...) as policy:`` around the loop, ``policy.reason(it)`` after
    every iteration (a collective when duration or signal is watched)."""

    def __init__(self, exit_interval: Optional[int] = None,
                 exit_duration_in_mins: Optional[float] = None,
                 exit_signal_handler: bool = False, exit_signal: int = signal.SIGTERM,
                 start_time: Optional[float] = None):
        self.exit_interval = exit_interval
        self.exit_duration_in_mins = exit_duration_in_mins
        self.exit_signal_handler = exit_signal_handler
        self.exit_signal = exit_signal
        self.start_time = time.time() if start_time is None else start_time
        self.signal_received = False
        self._previous_handler = None

    def __enter__(self):
        if self.exit_signal_handler:
            self._previous_handler = signal.signal(self.exit_signal, self._on_signal)
        return self

    def __exit__(self, *exc):
        if self.exit_signal_handler:
            signal.signal(self.exit_signal, self._previous_handler)
        return False

    def _on_signal(self, signum, frame):
        # Only a flag: the iteration in flight finishes (a collective must not be abandoned).
        self.signal_received = True

    def reason(self, iteration: int) -> Optional[str]:
        """Why to stop after ``iteration`` (the same answer on every rank), or None."""
        watched = self.exit_signal_handler or self.exit_duration_in_mins is not None
        if watched:
            minutes = (time.time() - self.start_time) / 60.0
            over_time = (self.exit_duration_in_mins is not None
                         and minutes > self.exit_duration_in_mins)
            flags = torch.tensor([float(self.signal_received), float(over_time)],
                                 device=default_device())
            if dist.is_initialized():
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            signalled, over_time = (bool(v) for v in flags.tolist())
            if signalled:
                return f"received {signal.Signals(self.exit_signal).name} (--exit-signal-handler)"
            if over_time:
                return (f"ran longer than --exit-duration-in-mins {self.exit_duration_in_mins:g}")
        if self.exit_interval and iteration % self.exit_interval == 0:
            return f"iteration is a multiple of --exit-interval {self.exit_interval}"
        return None
