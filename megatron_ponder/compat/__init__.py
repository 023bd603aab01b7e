"""Version-pinned compatibility shims (CPU execution of megatron-core)."""

from megatron_ponder.compat.cpu import activate_if_needed

__all__ = ["activate_if_needed"]
