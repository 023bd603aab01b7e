"""Fused operators used by the PonderLM-2 forward. One entry point per op; backends behind it."""

from megatron_ponder.ops.splice import (
    BACKEND_ENV,
    available_backends,
    backend_unavailable_reason,
    resolve_backend,
    splice,
    splice_reference,
)

__all__ = ["BACKEND_ENV", "available_backends", "backend_unavailable_reason",
           "resolve_backend", "splice", "splice_reference"]
