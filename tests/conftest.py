"""Shared fixtures. Single-process tests share one gloo world of size 1."""

import pytest


@pytest.fixture(scope="session")
def single_process():
    from megatron_ponder.parallel.state import ensure_single_process_parallel_state

    ensure_single_process_parallel_state()
