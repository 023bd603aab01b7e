"""Run megatron-core 0.16.1 on machines without CUDA (CPU + gloo).

megatron-core hard-codes CUDA in its DDP grad buffers, optimizer wrappers, gradient clipping,
pipeline schedules, RNG tracker and dist_checkpointing.save (device="cuda" literals,
torch.cuda.current_device(), torch.cuda.synchronize(), 'torch.cuda.FloatTensor' type checks).
Rather than scatter patches, this one module, activated once before any megatron object is
built and only when CUDA is absent, makes those calls mean "the CPU":

* a TorchFunctionMode rewrites CUDA device arguments to CPU and reports CPU tensors' legacy
  type strings in their CUDA spelling (so megatron's dtype checks accept them);
* torch.cuda device / synchronize / RNG functions become their CPU equivalents (as plain
  functions, because torch-function modes are not active inside autograd backward).

Everything here is tied to the pinned megatron-core version (checked at activation) and is
checked by the test suite, which runs entirely through it: its parity tests hold multi-rank
runs equal to one process and the model equal to an independent plain-PyTorch reference.
"""

import threading

import torch
from torch.overrides import TorchFunctionMode

SUPPORTED_MEGATRON_CORE = "0.16.1"

_active = False
_lock = threading.Lock()


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare integer means a CUDA ordinal in torch's device arguments.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaAsCpuMode(TorchFunctionMode):
    """Maps CUDA placement requests onto the CPU for every torch function call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to:
            args = tuple(torch.device("cpu") if i > 0 and _is_cuda_device(a) and
                         not isinstance(a, int) else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def _fresh(impl):
    """A distinct function object per patched name: torch.compile's rule table maps torch.cuda
    functions by identity and refuses one object registered under two names."""
    def patched(*args, **kwargs):
        return impl(*args, **kwargs)
    return patched


def _seed_cpu(seed, *_unused) -> None:
    # Not torch.manual_seed: that calls torch.cuda.manual_seed_all, i.e. this function.
    torch.default_generator.manual_seed(int(seed))


def _set_rng_state(state, *_unused, **_kwargs) -> None:
    torch.set_rng_state(state)


_CPU_EQUIVALENTS = {
    "current_device": lambda *a, **k: torch.device("cpu"),
    "synchronize": lambda *a, **k: None,
    "set_device": lambda *a, **k: None,
    "empty_cache": lambda *a, **k: None,
    "get_rng_state": lambda *a, **k: torch.get_rng_state(),
    "set_rng_state": _set_rng_state,
    "manual_seed": _seed_cpu,
    "manual_seed_all": _seed_cpu,
}


def _check_version() -> None:
    from megatron.core import package_info

    if package_info.__version__ != SUPPORTED_MEGATRON_CORE:
        raise RuntimeError(
            f"megatron_ponder's CPU compatibility layer is written for megatron-core "
            f"{SUPPORTED_MEGATRON_CORE}, found {package_info.__version__}; pin megatron-core "
            f"or re-validate megatron_ponder/compat/cpu.py")


def activate_if_needed() -> bool:
    """Activate the CPU layer when CUDA is unavailable. Idempotent; returns whether active."""
    global _active
    if torch.cuda.is_available():
        return False
    with _lock:
        if _active:
            return True
        _check_version()
        import torch.cuda.random as cuda_random
        from megatron.core.tensor_parallel import random as mcore_random

        for name, impl in _CPU_EQUIVALENTS.items():
            setattr(torch.cuda, name, _fresh(impl))
            if hasattr(cuda_random, name):
                setattr(cuda_random, name, _fresh(impl))
        mcore_random._get_cuda_rng_state = _fresh(_CPU_EQUIVALENTS["get_rng_state"])
        mcore_random._set_cuda_rng_state = _fresh(_set_rng_state)
        # Entered for the life of the process (modes are per thread; forked children inherit).
        _CudaAsCpuMode().__enter__()
        _active = True
    return True

