"""The shared multi-rank test helper: ``run_ranks(fn, world_size, *args)`` runs ``fn`` on N
gloo ranks in fresh processes (see megatron_ponder/parallel/local_ranks.py)."""

from megatron_ponder.parallel.local_ranks import run_local_ranks as run_ranks

__all__ = ["run_ranks"]
