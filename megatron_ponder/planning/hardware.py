"""Accelerator specifications the planner needs: memory, dense bf16 peak and memory bandwidth.

Datasheet values (SXM parts, dense, no sparsity). Every field can be overridden on the command
line (``--gpu-memory-gib``, ``--peak-tflops``, ``--memory-bandwidth-tbs``), and an unlisted
accelerator is described by giving all three.
"""

from dataclasses import dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_gib: float
    peak_bf16_tflops: float
    memory_bandwidth_tbs: float


GPU_SPECS = {
    "h100": GPUSpec("H100 SXM 80GB", 80.0, 989.0, 3.35),
    "h200": GPUSpec("H200 SXM 141GB", 141.0, 989.0, 4.8),
    "a100": GPUSpec("A100 SXM 80GB", 80.0, 312.0, 2.039),
    "a100-40gb": GPUSpec("A100 SXM 40GB", 40.0, 312.0, 1.555),
    "l40s": GPUSpec("L40S 48GB", 48.0, 362.0, 0.864),
    "b200": GPUSpec("B200 180GB", 180.0, 2250.0, 8.0),
}


def gpu_spec(gpu_type: Optional[str], memory_gib: Optional[float] = None,
             peak_tflops: Optional[float] = None,
             bandwidth_tbs: Optional[float] = None) -> GPUSpec:
    """The table's entry for ``gpu_type`` with any given field replaced; ``gpu_type`` None
    needs all three fields."""
    if gpu_type is None:
        missing = [flag for flag, value in (("--gpu-memory-gib", memory_gib),
                                             ("--peak-tflops", peak_tflops),
                                             ("--memory-bandwidth-tbs", bandwidth_tbs))
                   if value is None]
        if missing:
            raise ValueError(f"without --gpu-type give {', '.join(missing)}")
        spec = GPUSpec("custom", memory_gib, peak_tflops, bandwidth_tbs)
    else:
        key = gpu_type.lower()
        if key not in GPU_SPECS:
            raise ValueError(f"unknown --gpu-type {gpu_type!r}; choose one of "
                             f"{', '.join(GPU_SPECS)} or give --gpu-memory-gib, --peak-tflops "
                             f"and --memory-bandwidth-tbs")
        spec = GPU_SPECS[key]
        if memory_gib is not None:
            spec = replace(spec, memory_gib=memory_gib)
        if peak_tflops is not None:
            spec = replace(spec, peak_bf16_tflops=peak_tflops)
        if bandwidth_tbs is not None:
            spec = replace(spec, memory_bandwidth_tbs=bandwidth_tbs)
    for label, value in (("memory", spec.memory_gib), ("peak TFLOP/s", spec.peak_bf16_tflops),
                         ("bandwidth", spec.memory_bandwidth_tbs)):
        if value <= 0:
            raise ValueError(f"GPU {label} must be > 0, got {value}")
    return spec
