"""The open alert's second copy: ``state_dir/alert.json``.

The alert's state is first kept in the outbox database, committed with the message
that announces each transition (agent/uplink/outbox.py).  One copy is not enough: a
damaged ``outbox.db`` is moved aside and a cut-short WAL loses its last commits, and
with them a blank that must come back after a restart.  So the report also writes the
same state here, with ``agent.files.atomic_write`` (durable), OFF the press path: in the
report's deferred follow-up, after the message has gone.

Each copy carries ``seq``, which every change of the alert increments; at start the
report takes the newer of the two (agent/report/alert.py) and says loudly when either is
missing or unreadable while the other holds an open alert.  A cleared alert stays as a
tombstone (``state: cleared``), so an old open copy can never bring it back.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write

__all__ = ["ALERT_FILE", "AlertCopy"]

ALERT_FILE = "alert.json"


class AlertCopy:
    """``load()`` -> (value, problem); ``save(value)`` (raises OSError: a full disk)."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / ALERT_FILE

    def load(self) -> tuple[dict | None, str | None]:
        """(kept value, None); (None, None) if there is no copy; (None, why) if it is unusable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"cannot read ({exc.strerror or exc})"
        except ValueError as exc:  # not UTF-8
            return None, f"unreadable ({exc})"
        try:
            data = json.loads(text)
        except ValueError as exc:
            return None, f"unreadable ({exc})"
        value = data.get("alert") if isinstance(data, dict) else None
        if not isinstance(value, dict) or not isinstance(value.get("id"), str) \
                or not isinstance(value.get("state"), str):
            return None, "unreadable (no alert with an id and a state)"
        return value, None

    def save(self, value: dict) -> None:
        atomic_write(self.path, json.dumps({"alert": value}, separators=(",", ":")), 0o600)
