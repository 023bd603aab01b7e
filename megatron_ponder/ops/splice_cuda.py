"""Thin loader for the CUDA C++ splice kernels (``csrc/``, built by setup.py as ``megatron_ponder._C``).

The extension is optional: it exists only where setup.py found a CUDA torch and nvcc. ``load()``
returns the module or raises ``RuntimeError`` carrying the import failure, so callers can fall
back (auto backend) or report why (explicit request).
"""

import functools

import torch

EXTENSION = "megatron_ponder._C"


@functools.lru_cache(maxsize=None)
def _import():
    """(module, None) or (None, reason); cached because a failed import is not retried cheaply."""
    try:
        import importlib

        return importlib.import_module(EXTENSION), None
    except ImportError as exc:
        return None, (f"{EXTENSION} is not built ({exc}); build it with a CUDA torch and nvcc: "
                      f"pip install --no-build-isolation -e .")


def load():
    module, reason = _import()
    if module is None:
        raise RuntimeError(f"splice (cuda): {reason}")
    return module


def unavailable_reason():
    """None when the extension imports, else why not."""
    return _import()[1]


def forward_into(emb: torch.Tensor, prev: torch.Tensor, out: torch.Tensor, num_slots: int,
                 prev_slots: int) -> None:
    """Write the splice into ``out``; the extension re-checks shapes, so misuse cannot corrupt."""
    load().splice_forward(emb, prev, out, num_slots)


def backward_into(grad_out: torch.Tensor, grad_prev: torch.Tensor, num_slots: int,
                  prev_slots: int) -> None:
    load().splice_backward(grad_out, grad_prev, num_slots)
