"""What every bench script shares: the repository on ``sys.path`` (with tests/, whose
``services.free_port`` they use), the percentile they all report, and a poll with a
deadline that ends the bench with one line naming what it was waiting for."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from services import free_port  # noqa: E402,F401 - re-exported for the bench scripts

PROG = Path(sys.argv[0]).stem


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


def wait_for(predicate, timeout: float, what: str):
    """Poll *predicate* until it is truthy (and return it); end the bench after *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise SystemExit(f"{PROG}: timed out waiting for {what}")
