"""agent/core/heap.py: the start-up heap is frozen, so full collections walk only newer objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# In a child process: freezing is for the whole process, and this one runs every test.
PROBE = """
import gc, json
import agent.core.runtime, server.alerts.cli       # what an agent or a teacher client imports
from agent.core.heap import freeze_startup
before = len(gc.get_objects())
frozen = freeze_startup()
print(json.dumps({"before": before, "frozen": frozen, "after": len(gc.get_objects()),
                  "enabled": gc.isenabled()}))
"""


def test_freeze_startup_takes_the_start_up_heap_out_of_collections():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["frozen"] > 10_000              # pydantic, paho, gpiozero... all of it
    assert got["after"] < got["before"] // 10  # what a full collection still has to walk
    assert got["enabled"]                      # new garbage is still collected
