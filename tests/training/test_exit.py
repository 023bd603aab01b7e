"""ExitPolicy on its own (the multi-rank behaviour is in test_pretrain.py)."""

import os
import signal
import time

from megatron_ponder.training.exit import ExitPolicy


def test_exit_interval_only_on_multiples():
    policy = ExitPolicy(exit_interval=3)
    assert [it for it in range(1, 10) if policy.reason(it)] == [3, 6, 9]
    assert ExitPolicy().reason(100) is None


def test_signal_handler_sets_a_flag_and_restores_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with ExitPolicy(exit_signal_handler=True, exit_signal=signal.SIGUSR1) as policy:
            assert policy.reason(1) is None
            os.kill(os.getpid(), signal.SIGUSR1)  # handled by the policy: no exception, flag set
            assert policy.signal_received
            assert "SIGUSR1" in policy.reason(2)
        assert seen == []
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler from before the policy is back
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_duration_counts_from_the_given_start():
    assert ExitPolicy(exit_duration_in_mins=1.0, start_time=0.0).reason(1) is not None
    assert ExitPolicy(exit_duration_in_mins=60.0, start_time=time.time()).reason(1) is None
