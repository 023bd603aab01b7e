"""The shared multi-rank test helper: ``run_ranks(fn, world_size, *args)`` runs ``fn`` on N
local ranks in fresh processes, with the library's own launcher (megatron_ponder/local_ranks.py,
which the benchmark, the planner's ``--validate`` and the measuring tools use too)."""

from megatron_ponder.local_ranks import run_local_ranks as run_ranks

__all__ = ["run_ranks"]
