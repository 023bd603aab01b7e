"""--profile: record a few training steps, as Megatron-LM does.

Steps ``--profile-step-start`` up to (not including) ``--profile-step-end`` (counted from 0, the
first step this run trains) are recorded on ``--profile-ranks``. With ``--use-pytorch-profiler``
the torch profiler writes a Chrome/Perfetto trace per rank (CPU ops, and CUDA kernels on a GPU);
without it the steps are marked as the CUDA profiler's capture range, for
``nsys profile --capture-range=cudaProfilerApi``.
"""

import contextlib
import os
from typing import Optional, Sequence

import torch
import torch.distributed as dist


class StepProfiler:
    def __init__(self, enabled: bool, start: int, end: int, ranks: Sequence[int],
                 use_pytorch_profiler: bool, trace_dir: str):
        rank = dist.get_rank() if dist.is_initialized() else 0
        self.active_here = enabled and rank in set(ranks)
        self.start, self.end = start, end
        self.use_pytorch_profiler = use_pytorch_profiler
        self.trace_dir = trace_dir
        self.rank = rank
        self._profiler: Optional[torch.profiler.profile] = None
        self._recording = False
        self.trace_path: Optional[str] = None

    def step_begin(self, step: int) -> None:
        """Before training step ``step`` (0 = the first step of this run)."""
        if not self.active_here:
            return
        if step == self.start:
            self._begin()
        elif step == self.end:
            self.stop()

    def _begin(self) -> None:
        self._recording = True
        if self.use_pytorch_profiler:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self._profiler.__enter__()
        else:
            torch.cuda.cudart().cudaProfilerStart()

    def stop(self) -> None:
        """End the recording (at ``--profile-step-end``, or when training ends before it)."""
        if not self._recording:
            return
        self._recording = False
        if self._profiler is None:
            torch.cuda.cudart().cudaProfilerStop()
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._profiler.__exit__(None, None, None)
        os.makedirs(self.trace_dir, exist_ok=True)
        self.trace_path = os.path.join(
            self.trace_dir, f"trace_rank{self.rank}_steps{self.start}-{self.end}.json")
        self._profiler.export_chrome_trace(self.trace_path)
        self._profiler = None
        print(f"rank {self.rank}: wrote profile of steps {self.start}..{self.end - 1} to "
              f"{self.trace_path}", flush=True)

    def label(self, step: int):
        """A named range around one step in the trace (a no-op outside the recording)."""
        if self._recording and self._profiler is not None:
            return torch.profiler.record_function(f"train step {step}")
        return contextlib.nullcontext()
