"""Run megatron-core on machines without CUDA (CPU + gloo).

megatron-core hard-codes CUDA in its DDP grad buffers, optimizer wrappers, gradient clipping,
pipeline schedules, RNG tracker and dist_checkpointing.save (device="cuda" literals,
torch.cuda.current_device(), torch.cuda.synchronize(), 'torch.cuda.FloatTensor' type checks).
Rather than scatter patches, this one module makes those calls mean "the CPU" while it is
active:

* a TorchFunctionMode rewrites CUDA device arguments to CPU and reports CPU tensors' legacy
  type strings in their CUDA spelling (so megatron's dtype checks accept them);
* torch.cuda device / synchronize / RNG functions become their CPU equivalents (as plain
  functions, because torch-function modes are not active inside autograd backward).

It is switched on only where megatron-core's runtime is set up (``mcore.init`` on a machine
without CUDA, or ``with cuda_as_cpu():``) and switched off again by ``deactivate`` (which
``mcore.shutdown`` calls for the ``init`` that switched it on): importing megatron_ponder or
loading the transformers-native model leaves torch untouched. Everything here is tied to the
supported megatron-core version (see ``version.py``) and is checked by the test suite, which
runs through it: its parity tests hold multi-rank runs equal to one process and the model
equal to an independent plain-PyTorch reference.
"""

import contextlib
import threading
from typing import Optional

import torch
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from megatron_ponder.mcore.version import check_version


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


def _get_rng_state(*_unused, **_kwargs) -> torch.Tensor:
    return torch.get_rng_state()


_CPU_EQUIVALENTS = {
    "current_device": lambda *a, **k: torch.device("cpu"),
    "synchronize": lambda *a, **k: None,
    "set_device": lambda *a, **k: None,
    "empty_cache": lambda *a, **k: None,
    "get_rng_state": _get_rng_state,
    "set_rng_state": _set_rng_state,
    "manual_seed": _seed_cpu,
    "manual_seed_all": _seed_cpu,
}
# megatron-core 0.16's RNG tracker reads and writes CUDA RNG state through these helpers of
# megatron.core.tensor_parallel.random.
_MCORE_RNG_EQUIVALENTS = {
    "_get_cuda_rng_state": _get_rng_state,
    "_set_cuda_rng_state": _set_rng_state,
}


class _ActiveLayer:
    """What ``activate`` changed, so that ``deactivate`` can put it back."""

    def __init__(self):
        import torch.cuda.random as cuda_random
        from megatron.core.tensor_parallel import random as mcore_random

        self.thread = threading.get_ident()
        self.originals = []  # (module, name, original attribute)
        for module, equivalents in ((torch.cuda, _CPU_EQUIVALENTS),
                                    (cuda_random, _CPU_EQUIVALENTS),
                                    (mcore_random, _MCORE_RNG_EQUIVALENTS)):
            for name, impl in equivalents.items():
                if hasattr(module, name):
                    self.originals.append((module, name, getattr(module, name)))
                    setattr(module, name, _fresh(impl))
        self.mode = _CudaAsCpuMode()
        self.mode.__enter__()

    def undo(self) -> None:
        if threading.get_ident() != self.thread:
            raise RuntimeError("the CPU layer must be deactivated in the thread that activated "
                               "it (torch-function modes are per thread)")
        stack = _get_current_function_mode_stack()
        if not stack or stack[-1] is not self.mode:
            raise RuntimeError("cannot deactivate the CPU layer: another TorchFunctionMode "
                               "entered after it is still active")
        self.mode.__exit__(None, None, None)
        for module, name, original in reversed(self.originals):
            setattr(module, name, original)


_layer: Optional[_ActiveLayer] = None
_lock = threading.Lock()


def activate() -> bool:
    """Switch the layer on (in this thread; forked children inherit it) when CUDA is absent.

    Idempotent. Returns True when this call switched it on, False when CUDA is present or the
    layer was already on. Raises when the installed megatron-core is not a supported version:
    the layer replaces functions by name."""
    global _layer
    if torch.cuda.is_available():
        return False
    with _lock:
        if _layer is not None:
            return False
        check_version(strict=True)
        _layer = _ActiveLayer()
    return True


def deactivate() -> None:
    """Put back every torch.cuda / megatron-core function and leave the mode. Idempotent."""
    global _layer
    with _lock:
        if _layer is None:
            return
        _layer.undo()
        _layer = None


@contextlib.contextmanager
def cuda_as_cpu():
    """The layer for the duration of a ``with`` block (left on if it was already on)."""
    switched_on = activate()
    try:
        yield
    finally:
        if switched_on:
            deactivate()
