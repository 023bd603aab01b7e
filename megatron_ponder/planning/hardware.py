"""Accelerator and interconnect specifications the planner needs.

GPU: memory, dense bf16 peak, memory bandwidth and streaming multiprocessors (datasheet values,
SXM parts, dense, no sparsity). Every field but the SM count can be overridden on the command
line (``--gpu-memory-gib``, ``--peak-tflops``, ``--memory-bandwidth-tbs``), and an unlisted
accelerator is described by giving all three.

Interconnect (``Interconnect``): GPUs per node, the bandwidth one GPU's collectives reach inside
a node (NVLink) and across nodes (its share of the node's network adapters), and a latency per
call. The bandwidths are *achievable bus bandwidths*, taken as 80% of the per-direction link
rate (NCCL's ring collectives reach about that on these systems): H100/H200 NVLink 4 (450 GB/s
per direction) and one 400 Gb/s adapter per GPU (DGX H100); A100 NVLink 3 (300 GB/s) and one
200 Gb/s HDR adapter per GPU (DGX A100, the Selene machine of Narayanan et al.); B200 NVLink 5
(900 GB/s) and 400 Gb/s per GPU; L40S has no NVLink (PCIe 4.0 x16, 32 GB/s) and is given
100 Gb/s of network per GPU. All are flags (``--gpus-per-node``, ``--nvlink-bandwidth-gbs``,
``--network-bandwidth-gbs``, ``--nvlink-latency-us``, ``--network-latency-us``).
"""

from dataclasses import dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_gib: float
    peak_bf16_tflops: float
    memory_bandwidth_tbs: float
    sm_count: int = 132  # streaming multiprocessors: how many matmul tiles run at once


GPU_SPECS = {
    "h100": GPUSpec("H100 SXM 80GB", 80.0, 989.0, 3.35, 132),
    "h200": GPUSpec("H200 SXM 141GB", 141.0, 989.0, 4.8, 132),
    "a100": GPUSpec("A100 SXM 80GB", 80.0, 312.0, 2.039, 108),
    "a100-40gb": GPUSpec("A100 SXM 40GB", 40.0, 312.0, 1.555, 108),
    "l40s": GPUSpec("L40S 48GB", 48.0, 362.0, 0.864, 142),
    "b200": GPUSpec("B200 180GB", 180.0, 2250.0, 8.0, 148),
}


@dataclass(frozen=True)
class Interconnect:
    """How a node's GPUs talk: ``nvlink_gbs`` inside a node, ``network_gbs`` per GPU across
    nodes (GB/s of achievable bus bandwidth), and the fixed cost of one collective or p2p
    call inside / across nodes."""

    gpus_per_node: int
    nvlink_gbs: float
    network_gbs: float
    nvlink_latency_us: float = 10.0
    network_latency_us: float = 20.0

    def describe(self) -> str:
        return (f"{self.gpus_per_node} GPUs/node, {self.nvlink_gbs:g} GB/s in a node, "
                f"{self.network_gbs:g} GB/s per GPU across nodes, latency "
                f"{self.nvlink_latency_us:g}/{self.network_latency_us:g} us per call")


INTERCONNECTS = {
    "h100": Interconnect(8, 360.0, 40.0),
    "h200": Interconnect(8, 360.0, 40.0),
    "a100": Interconnect(8, 240.0, 20.0),
    "a100-40gb": Interconnect(8, 240.0, 20.0),
    "l40s": Interconnect(8, 25.0, 10.0),
    "b200": Interconnect(8, 720.0, 40.0),
}
DEFAULT_INTERCONNECT = INTERCONNECTS["h100"]


def interconnect(gpu_type: Optional[str], gpus_per_node: Optional[int] = None,
                 nvlink_gbs: Optional[float] = None, network_gbs: Optional[float] = None,
                 nvlink_latency_us: Optional[float] = None,
                 network_latency_us: Optional[float] = None) -> Interconnect:
    """The default interconnect of ``gpu_type`` (an H100 node for a custom GPU) with any given
    field replaced."""
    spec = INTERCONNECTS.get((gpu_type or "").lower(), DEFAULT_INTERCONNECT)
    given = dict(gpus_per_node=gpus_per_node, nvlink_gbs=nvlink_gbs, network_gbs=network_gbs,
                 nvlink_latency_us=nvlink_latency_us, network_latency_us=network_latency_us)
    spec = replace(spec, **{key: value for key, value in given.items() if value is not None})
    flags = dict(gpus_per_node="--gpus-per-node", nvlink_gbs="--nvlink-bandwidth-gbs",
                 network_gbs="--network-bandwidth-gbs")
    for field_name, flag in flags.items():
        if getattr(spec, field_name) <= 0:
            raise ValueError(f"{flag} must be > 0, got {getattr(spec, field_name)}")
    for field_name, flag in (("nvlink_latency_us", "--nvlink-latency-us"),
                             ("network_latency_us", "--network-latency-us")):
        if getattr(spec, field_name) < 0:
            raise ValueError(f"{flag} must be >= 0, got {getattr(spec, field_name)}")
    return spec


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
        spec = GPUSpec("custom", memory_gib, peak_tflops, bandwidth_tbs)  # H100-like SM count
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
