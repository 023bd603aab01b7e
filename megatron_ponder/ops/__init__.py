"""Fused operators used by the PonderLM-2 forward. One entry point per op; backends behind it."""

from megatron_ponder.ops.splice import splice, splice_reference

__all__ = ["splice", "splice_reference"]
