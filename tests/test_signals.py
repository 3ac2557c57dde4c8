"""agent/signals.py: a daemon's main thread waits for SIGTERM/SIGINT without a lock in a
signal handler, so no burst of signals can hang it (an Event set from a handler could:
an ingest worker was found hung and orphaned that way)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The shape of an ingest worker, which sets its gauges between waits of 0.5 s: here the
# waits are as short as can be, so signals land at every point of one.
CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from agent.signals import StopSignals
    stop = StopSignals()
    print("ready", flush=True)
    while not stop.wait({step}):
        pass
    print("stopped", stop.received, flush=True)
""")


def _run_child(step: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO), step=step)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_burst_of_sigterms_always_ends_the_wait():
    # The old way (signal.signal(SIGTERM, lambda *_: event.set()) with event.wait(0.0001))
    # hangs within these 25 rounds: checked by putting it back.
    for _ in range(25):
        proc = _run_child("0.0001")
        for _ in range(200):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                break
        out, _ = proc.communicate(timeout=20)  # a hang is a TimeoutExpired here
        # It stopped; a SIGTERM of the burst landing while Python exits (its handlers are
        # back to the default by then) may end the last instant: both are a clean stop.
        assert out == f"stopped {int(signal.SIGTERM)}\n" and proc.returncode in (0, -signal.SIGTERM), \
            (proc.returncode, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_a_wait_without_a_time_limit(sig):
    proc = _run_child("None")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and out == f"stopped {int(sig)}\n"


def test_wait_times_out_other_signals_do_not_stop_it_and_close_puts_everything_back():
    from agent.signals import StopSignals

    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    before_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before_fd)
    usr1 = []
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda *_: usr1.append(1))
    stop = StopSignals()
    try:
        assert stop.wait(0.05) is False and stop.received is None
        os.kill(os.getpid(), signal.SIGUSR1)  # its own handler runs; it writes the wakeup pipe too
        assert stop.wait(0.2) is False and usr1 == [1] and stop.received is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) is True and stop.received == signal.SIGTERM
        assert stop.wait(0) is True  # stays set
    finally:
        stop.close()
        signal.signal(signal.SIGUSR1, previous_usr1)
    assert signal.getsignal(signal.SIGTERM) is before_term and signal.getsignal(signal.SIGINT) is before_int
    assert signal.set_wakeup_fd(before_fd) == before_fd  # the wakeup fd there was before, not ours


def test_programs_started_while_it_waits_still_stop_on_sigterm():
    # Why not block the signals and sigtimedwait: the mask would pass to every child through exec.
    from agent.signals import StopSignals

    stop = StopSignals()
    try:
        child = subprocess.Popen(["sleep", "60"])
        child.terminate()
        assert child.wait(10) == -signal.SIGTERM
    finally:
        stop.close()
