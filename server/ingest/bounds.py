"""The collector's own bounds on a device's timestamps, applied by ingest after the wire
contract (agent/protocol.py) has accepted a message.

The contract refuses times outside 2000-2099 and numbers no store can hold.  What it cannot
know is the collector's clock, and how the store uses times:

* **Stored as one text form.**  The store compares times as text (retention purges, the
  weekly report's week, the newest status wins), and RFC 3339 / ISO 8601 allows many
  spellings of one moment: ``2026-W01-1T00:00:00Z`` or ``20260105T000000Z`` sort after
  every ``2026-12-...`` time, so a blocked attempt sent with one would miss its week's
  report and outlive its retention.  ``bound_ts`` rewrites every ts to the protocol's own
  form (``agent.protocol.now_ts``: UTC, milliseconds, Z) before anything is stored.  (The
  raw payload is stored as sent, next to it.)
* **Not after tomorrow.**  An event, heartbeat or status whose ts is more than
  ``MAX_AHEAD`` ahead of the collector's clock is refused (one log line, counted as
  malformed): it would outlive retention, sit on top of every list, and a status from the
  future would hide the device's real status (newest wins) until then.
* **An alert is never refused**: a press must reach staff whatever the device's clock says.
  One from the future is stored with the time the collector received it instead (and says so
  in one log line), so the incident's times and the order of its transitions stay sane.

A ts in the far past needs no bound of its own: in the one text form it sorts before every
cut-off, so retention purges it at its next pass rather than keeping it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.protocol import now_ts, parse_ts

MAX_AHEAD = timedelta(days=1)


class TooFarAhead(ValueError):
    """A non-alert message whose ts is more than MAX_AHEAD ahead of the collector's clock."""


def bound_ts(kind: str, data: dict, now: datetime | None = None) -> str | None:
    """Put *data*'s ts in the one stored form, applying the bounds above.  Returns a note to
    log if an alert's ts was replaced, None otherwise; raises TooFarAhead to refuse."""
    if "ts" not in data:
        return None
    now = now or datetime.now(timezone.utc)
    moment = parse_ts(data["ts"])  # the contract has accepted it: this cannot fail
    if moment - now <= MAX_AHEAD:
        data["ts"] = now_ts(moment)
        return None
    if kind != "alert":
        raise TooFarAhead(f"ts: {data['ts']!r} is more than {MAX_AHEAD.days} day ahead of the collector's clock "
                          f"({now_ts(now)}); refused")
    sent, data["ts"] = data["ts"], now_ts(now)
    return f"ts {sent!r} is ahead of the collector's clock; stored with the received time {data['ts']}"
