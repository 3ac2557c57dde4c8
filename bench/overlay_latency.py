#!/usr/bin/env python3
"""How fast the Wayland report blank covers the screen.

DESIGN.md's target for "button edge -> blank issued" is p99 <= 5 ms, and on a Pi the
screen should follow within one frame plus the panel.  This bench runs a headless sway
desktop (as ``nobody``, 800x600, pixman renderer), puts the real GTK layer-shell overlay
(agent/desktop/programs/overlay_wayland.py) on it through ``Screen``/``WaylandBackend``, and for
each of ``--rounds`` presses measures:

* issued:  ``Screen.blank()`` called -> returned (the line is down the pipe);
* covered: ``Screen.blank()`` called -> the overlay reports its first frame painted at
  full size (its ``shown`` event, read back over the pipe);

and, at the end, the overlay process's memory (RSS, and USS: what it alone adds).

Needs root (sway runs as another user) plus sway, python3-gi and gir1.2-gtklayershell-0.1.
Last line: ``overlay_latency issued_p99_ms=... covered_p50_ms=... covered_p99_ms=...
frame_ms=16.7 covered_p99_frames=...``.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import percentile  # noqa: E402 - also puts the repo and tests/ on sys.path
from agent.desktop.wayland import WaylandBackend, wayland_overlay_available  # noqa: E402
from agent.report.screen import Screen  # noqa: E402

FRAME_MS = 1000 / 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="presses to time (default 200)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        print("overlay_latency: error: run as root (sway runs as the 'nobody' user)", file=sys.stderr)
        return 1
    if not wayland_overlay_available():
        print("overlay_latency: error: needs python3-gi and gir1.2-gtklayershell-0.1", file=sys.stderr)
        return 1
    from wayland_fixtures import headless_sway

    issued, covered = [], []
    with tempfile.TemporaryDirectory() as tmp, headless_sway(Path(tmp) / "sway.log") as session:
        backend = WaylandBackend(session.user)
        screen = Screen(backend)
        events: queue.Queue = queue.Queue()
        backend.on_event = lambda event: events.put((time.perf_counter_ns(), event.get("event")))
        screen.start()
        if not backend.ready.wait(15):
            print("overlay_latency: error: the overlay did not start", file=sys.stderr)
            return 1

        def wait_for(kind: str) -> int:
            while True:
                at, got = events.get(timeout=15)
                if got == kind:
                    return at
        try:
            for _ in range(args.rounds):
                t0 = time.perf_counter_ns()
                screen.blank("Well done for telling. A grown-up is coming.")
                t1 = time.perf_counter_ns()
                shown_at = wait_for("shown")
                issued.append((t1 - t0) / 1e6)
                covered.append((shown_at - t0) / 1e6)
                screen.unblank()
                wait_for("hidden")
            import psutil

            overlay = psutil.Process(backend._proc.pid)
            rss_mb = overlay.memory_info().rss / 2**20
            uss_mb = overlay.memory_full_info().uss / 2**20  # what it alone adds (shared GTK libs aside)
        finally:
            screen.close()
    print(f"rounds={args.rounds} issued_p50_ms={statistics.median(issued):.3f} "
          f"covered_min_ms={min(covered):.2f} covered_max_ms={max(covered):.2f} "
          f"overlay_rss_mb={rss_mb:.1f} overlay_uss_mb={uss_mb:.1f}")
    print(f"overlay_latency issued_p99_ms={percentile(issued, 99):.3f} covered_p50_ms={percentile(covered, 50):.2f} "
          f"covered_p99_ms={percentile(covered, 99):.2f} frame_ms={FRAME_MS:.1f} "
          f"covered_p99_frames={percentile(covered, 99) / FRAME_MS:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
