"""Shared fixtures. Single-process tests share one gloo world of size 1."""

import pytest


@pytest.fixture(scope="session")
def single_process():
    from megatron_ponder import mcore

    mcore.init(single_process=True)
