"""launch/local.py's signal handling in this process: a real SIGINT, delivered to the real handler."""

import os
import signal
import time

import pytest
from prefect.exceptions import TerminationSignal

from launch.local import LocalRun, signals_handled
from tasks.stops import raise_a_lost_stop


def _swallowed(which: signal.Signals) -> None:
    """A library that catches everything: the handler's exception is raised in here and dropped."""
    try:
        os.kill(os.getpid(), which)
        time.sleep(2)  # the handler runs at the next bytecode, long before this ends
        pytest.fail(f"{which.name} was not delivered")
    except BaseException:  # noqa: BLE001 - what such a library does
        pass


@pytest.mark.parametrize(("which", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, TerminationSignal)])
def test_a_stop_a_library_dropped_is_raised_again_at_the_epoch_end(
    which: signal.Signals, raised: type[BaseException]
) -> None:
    run = LocalRun()
    with signals_handled(run):
        raise_a_lost_stop()  # nothing received yet: training goes on
        _swallowed(which)
        assert run.signals == [which]
        with pytest.raises(raised):
            raise_a_lost_stop()
        run.finish()
        raise_a_lost_stop()  # the run has completed: a signal now only cuts the clean-up short
    run.completed = False
    raise_a_lost_stop()  # outside the command-line run (a worker, a test): never raises
