#!/usr/bin/env python3
"""How fast the X11 overlay puts itself back when a pupil's X client undoes it.

Issue 14 asks that the blank and the lock be restored within 1 s.  This bench starts an
Xvfb display that wants a cookie (tests/lock_fixtures.py: ``X11Session``), shows the
real Tk overlay (agent/desktop/programs/overlay_x11.py) through ``X11Backend`` as the
agent's user (root here), and for each of ``--rounds`` rounds has the pupil (``nobody``)
run one of ``xdotool windowunmap``, ``windowmove 3000 3000`` or ``windowsize 10 10`` on
it, measuring:

* restored: the pupil's xdotool is started -> the overlay says ``tampered`` (it has put
  the window back and synced with the X server).

The time includes starting runuser and xdotool (tens of ms), so it is an upper bound.  Needs root, Xvfb, xauth,
xhost and xdotool.  Last line: ``overlay_restore restored_p50_ms=... restored_p99_ms=...
restored_max_ms=... within_1s=yes|no``.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import percentile  # noqa: E402 - also puts the repo and tests/ on sys.path
from agent.desktop.x11 import X11Backend  # noqa: E402

ATTACKS = (("windowunmap",), ("windowmove", "3000", "3000"), ("windowsize", "10", "10"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="attacks to time (default 60)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        print("overlay_restore: error: run as root (the pupil's clients run as 'nobody')", file=sys.stderr)
        return 1
    from lock_fixtures import X11Session

    restored = []
    with tempfile.TemporaryDirectory() as tmp:
        session = X11Session(Path(tmp))
        backend = None
        try:
            cookie = session.display_setup(Path(tmp))
            backend = X11Backend(display=session.display, xauthority=str(cookie))
            backend.REPORT_SECONDS = 0  # every put-back reported: each is a sample here
            backend.MAX_RESTORES = 10**6  # and no fallback: only the overlay is timed
            events: queue.Queue = queue.Queue()
            backend.on_event = lambda event: events.put((time.perf_counter_ns(), event.get("event")))
            backend.start()
            if not backend.ready.wait(15):
                print("overlay_restore: error: the overlay did not start", file=sys.stderr)
                return 1
            backend.show("Well done for telling. A grown-up is coming.")
            window = None
            while not window:
                window = session.pupil("xdotool", "search", "--name", "^classroom-safety$", check=False).stdout.split()
            for round_ in range(args.rounds):
                attack = ATTACKS[round_ % len(ATTACKS)]
                t0 = time.perf_counter_ns()
                subprocess.run(session.pupil_argv("xdotool", attack[0], window[0], *attack[1:]), check=True,
                               capture_output=True, timeout=30)
                while True:
                    at, got = events.get(timeout=15)
                    if got == "tampered":
                        restored.append((at - t0) / 1e6)
                        break
                while not events.empty():
                    events.get_nowait()
        finally:
            if backend is not None:
                backend.close()
            session.close()
    print(f"rounds={args.rounds} restored_min_ms={min(restored):.1f} restored_max_ms={max(restored):.1f}")
    print(f"overlay_restore restored_p50_ms={percentile(restored, 50):.1f} "
          f"restored_p99_ms={percentile(restored, 99):.1f} restored_max_ms={max(restored):.1f} "
          f"within_1s={'yes' if max(restored) < 1000 else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
