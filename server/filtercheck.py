"""The nightly filter check: every device proves its filter works, and a failure is told.

Once a night (``HOUR`` school time, default 02:00; ``serve --filter-check-hour``) the collector
sends ``{"cmd": "filter-check", "by": "nightly"}`` to every device of each school's live config
(not retained: a device that is off tonight is checked tomorrow night).  Per school: a collector
serving several (server/sites.py) runs each one's night in its own time zone, and each run is
audited in its own school.  The agent runs the same
check as ``classroom-agent filter check`` (agent/filter/component.py) and sends the
``filter_check`` event, which lands in the check log with everyone else's.

Whatever started it, a ``filter_check`` that failed raises a technician's device alert
(``filter-check``: on its school's devices page and API) and one that passed clears it
(``listener``, on ingest's listeners); with ``--notify`` the failure is also e-mailed and
posted to the webhooks (server/notify/events.py).  A night's run is recorded in the audit
log (``filter.nightly``), which is also how a restarted collector knows tonight is done.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Callable

from agent import protocol

from .localtime import zone
from .sites import trees_of

log = logging.getLogger(__name__)

HOUR = 2
ALERT_KIND = "filter-check"


class NightlyCheck:
    """``run(now)`` sends tonight's commands if due; ``start()`` checks every few minutes."""

    def __init__(self, store, tree_source: Callable[[], object], publish_cmd: Callable[[str, bytes, int, bool], None],
                 prefix_source: Callable[[], str], *, hour: int = HOUR, interval: float = 300.0) -> None:
        self.store = store
        self.tree_source = tree_source
        self.publish_cmd = publish_cmd
        self.prefix_source = prefix_source
        self.hour = hour
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def night(now: datetime, tree) -> str:
        """The audit target naming tonight's run: site and school date."""
        return f"{tree.site.site}:{now.astimezone(zone(tree.site.timezone)).date().isoformat()}"

    def due(self, now: datetime, tree) -> bool:
        """Past tonight's hour (school time), and tonight's run not in the audit log yet."""
        if now.astimezone(zone(tree.site.timezone)).hour < self.hour:
            return False
        night = self.night(now, tree)
        recent = self.store.list_audit(action="filter.nightly", limit=50, sites=[tree.site.site, None])
        return not any(row["target"] == night for row in recent)

    def run(self, now: datetime | None = None) -> int:
        """Send tonight's ``filter-check`` to every device of each school whose night is due;
        returns how many were sent.  ``tree_source()`` gives one live tree or every school's."""
        now = now or datetime.now(timezone.utc)
        return sum(self.run_school(tree, now) for tree in trees_of(self.tree_source()))

    def run_school(self, tree, now: datetime) -> int:
        """Tonight's commands to one school's devices, if its night is due."""
        if not self.due(now, tree):
            return 0
        payload = protocol.encode({"cmd": "filter-check", "by": "nightly"})
        sent = failed = 0
        for room in tree.rooms.values():
            for device in room.devices:
                topic = protocol.topic(self.prefix_source(), tree.site.site, room.room, device.id, "cmd")
                try:
                    self.publish_cmd(topic, payload, protocol.QOS["cmd"], False)
                    sent += 1
                except Exception as exc:  # noqa: BLE001 - one bad publish must not stop the rest
                    failed += 1
                    log.warning("nightly filter check: cmd to %s failed: %s", device.id, exc)
        self.store.audit("system", "filter.nightly", self.night(now, tree), {"sent": sent, "failed": failed},
                         site=tree.site.site)
        log.info("nightly filter check: asked %d devices of %s", sent, tree.site.site)
        return sent

    def listener(self, kind: str, where, data: dict) -> None:
        """Ingest listener: a failed check raises the technician's device alert, a passed one clears it."""
        if kind != "event" or data.get("type") != "filter_check" or not isinstance(data.get("ok"), bool):
            return
        device, room = data.get("device") or "", data.get("room")
        try:
            if data["ok"]:
                self.store.clear_device_alerts(ALERT_KIND, device)
            else:
                failed = [r.get("domain") for r in data.get("results") or [] if isinstance(r, dict)
                          and r.get("result") != "pass"]
                # The alert is the device's school's (its technicians' devices page).
                self.store.raise_device_alert(ALERT_KIND, device, room,
                                              f"filter check failed ({data.get('by') or '?'}): "
                                              + ", ".join(str(d) for d in failed[:5]),
                                              site=getattr(where, "site", None) or data.get("site"))
        except Exception:  # noqa: BLE001 - the event is stored; the alert is a courtesy
            log.exception("could not record the filter check alert for %s", device)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.run()
                except Exception:  # noqa: BLE001 - try again at the next round
                    log.exception("nightly filter check failed")
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=loop, name="filter-nightly", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
