"""The ``devices``, ``heartbeats``, ``enrol_tokens`` and ``device_alerts`` tables.

The registry row of a device is written from three sides: ingest (last seen on every
batch, retained status and Last Will, heartbeats), enrolment (credentials: a hash
for the collector, SHA-256 or argon2, and a mosquitto ``$7$`` hash for the broker's password file) and
the technician's dark-device alerts.  What the hashes are and when a device counts as
dark is decided in server/devices.py; here is only how they are stored.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from .engine import Tx
from .schema import new_id, str_or_none, utcnow


class DevicesTable:
    """Store methods for the device registry (mixed into ``Store``)."""

    # ------------------------------------------------------------------ from ingest

    def _touch_devices(self, tx: Tx, places: Iterable[tuple[str, str, str]], now: str) -> None:
        # Once per device per batch: this is what dark-device detection reads.
        unique = {device: (site, room) for site, room, device in places}
        if not unique:
            return
        tx.executemany(
            "INSERT INTO devices (id, site, room, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, site = excluded.site, "
            "room = excluded.room",
            # Sorted: concurrent workers then lock device rows in the same order (no deadlock).
            [(device, site, room, now) for device, (site, room) in sorted(unique.items())],
        )

    def record_status(self, site: str, room: str, device: str, data: dict) -> None:
        self.write(lambda tx: self._record_status(tx, site, room, device, data))

    def _record_status(self, tx: Tx, site: str, room: str, device: str, data: dict) -> None:
        # Retained status and Last Will may be replayed: only a newer ts wins.
        tx.execute(
            "INSERT INTO devices (id, site, room, status, status_ts, agent_version, config_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "status = excluded.status, status_ts = excluded.status_ts, "
            "agent_version = COALESCE(excluded.agent_version, devices.agent_version), "
            "config_version = COALESCE(excluded.config_version, devices.config_version) "
            "WHERE devices.status_ts IS NULL OR devices.status_ts <= excluded.status_ts",
            (device, site, room, data["state"], data["ts"], str_or_none(data.get("agent_version")),
             str_or_none(data.get("config_version"))),
        )

    def _record_heartbeats(self, tx: Tx, beats: list[tuple[Any, dict]], now: str) -> None:
        def num(v):
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        # Device health only: a user an older agent still sends is not kept (data minimisation;
        # the user is stored where it has a purpose: login/logout, blocked, report_evidence).
        tx.executemany(
            "INSERT INTO heartbeats (device, ts, cpu, mem, temp, uptime, user_name, config_version, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, ts) DO NOTHING",
            [(w.device, d["ts"], num(d.get("cpu")), num(d.get("mem")), num(d.get("temp")), num(d.get("uptime")),
              None, str_or_none(d.get("config_version")), now) for w, d in beats],
        )
        latest: dict[str, dict] = {}
        for w, d in beats:
            latest[w.device] = {k: v for k, v in d.items() if k != "user"}
        tx.executemany(
            "UPDATE devices SET last_heartbeat = ?, config_version = COALESCE(?, config_version) WHERE id = ?",
            [(json.dumps(d, separators=(",", ":")), str_or_none(d.get("config_version")), dev)
             for dev, d in sorted(latest.items())],
        )

    # ------------------------------------------------------------------ the registry

    def get_device(self, device: str) -> dict | None:
        return self.query_one("SELECT * FROM devices WHERE id = ?", (device,))

    def list_devices(self, rooms: Sequence[str] | None = None, site: str | None = None) -> list[dict]:
        """Registry rows (no hashes); with *site*, that school's only (and with *rooms*,
        only those rooms: room ids are a school's own, so they mean nothing without it)."""
        sql = ("SELECT id, site, room, enrolled_at, enrolled_by, status, status_ts, agent_version, "
               "config_version, last_seen, last_heartbeat FROM devices")
        params: tuple = ()
        if site is not None:
            sql, params = sql + " WHERE site = ?", (site,)
        rows = self.query(sql + " ORDER BY room, id", params)
        if rooms is not None:
            rows = [r for r in rows if r["room"] in rooms]
        for row in rows:
            row["last_heartbeat"] = json.loads(row["last_heartbeat"]) if row["last_heartbeat"] else None
        return rows

    def device_counts(self) -> dict[str, int]:
        """For /metrics: devices ``online``, ``known`` and open technician alerts (``alerts_open``)."""
        return {"online": self.count("devices", "status = ?", ("online",)), "known": self.count("devices"),
                "alerts_open": self.count("device_alerts", "cleared_at IS NULL")}

    def site_health(self, open_since: str | None = None) -> dict[str, dict[str, int]]:
        """Per school: devices ``known``, ``online`` and ``dark`` (an open dark alert),
        incidents raised in all, and ``open_alerts`` (raised since *open_since*, not yet
        cleared and not a logged concern, as the office board counts them): counts only, the trust level's view."""
        out: dict[str, dict[str, int]] = {}

        def row(site):
            return out.setdefault(site, {"known": 0, "online": 0, "dark": 0, "incidents": 0, "open_alerts": 0})

        for r in self.query("SELECT site, COUNT(*) AS n, SUM(CASE WHEN status = 'online' THEN 1 ELSE 0 END) AS up "
                            "FROM devices WHERE site IS NOT NULL GROUP BY site"):
            row(r["site"]).update(known=int(r["n"]), online=int(r["up"] or 0))
        for r in self.query("SELECT site, COUNT(DISTINCT device) AS n FROM device_alerts "
                            "WHERE kind = 'dark' AND cleared_at IS NULL AND site IS NOT NULL GROUP BY site"):
            row(r["site"])["dark"] = int(r["n"])
        for r in self.query("SELECT site, COUNT(*) AS n FROM incidents GROUP BY site"):
            row(r["site"])["incidents"] = int(r["n"])
        if open_since is not None:
            # Not a concern staff logged by hand (alert_state 'logged'): no press to answer.
            for r in self.query("SELECT site, COUNT(*) AS n FROM incidents WHERE alert_state NOT IN "
                                "('cleared', 'logged') AND raised_at >= ? GROUP BY site", (open_since,)):
                row(r["site"])["open_alerts"] = int(r["n"])
        return out

    # ------------------------------------------------------------------ enrolment

    def set_device_credentials(self, device: str, password_hash: str, by: str, site: str | None = None,
                               room: str | None = None, mqtt_hash: str | None = None) -> None:
        """Record an enrolment: the collector's hash (server/http/auth.py) and, if given, the broker's ``$7$`` hash."""
        now = utcnow()
        self.execute("INSERT INTO devices (id, site, room, password_hash, mqtt_hash, enrolled_at, enrolled_by) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                     "password_hash = excluded.password_hash, "
                     "mqtt_hash = COALESCE(excluded.mqtt_hash, devices.mqtt_hash), "
                     "enrolled_at = excluded.enrolled_at, enrolled_by = excluded.enrolled_by, "
                     "site = COALESCE(excluded.site, devices.site), room = COALESCE(excluded.room, devices.room)",
                     (device, site, room, password_hash, mqtt_hash, now, by))

    def mqtt_hashes(self) -> dict[str, str]:
        """{device: mosquitto hash} of every enrolled device (for the broker's password file)."""
        rows = self.query("SELECT id, mqtt_hash FROM devices WHERE mqtt_hash IS NOT NULL")
        return {r["id"]: r["mqtt_hash"] for r in rows}

    def add_enrol_token(self, token_hash: str, device: str, created_by: str, expires_at: str,
                        site: str | None = None) -> None:
        self.execute("INSERT INTO enrol_tokens (token_hash, device, created_by, created_at, expires_at, site) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (token_hash, device, created_by, utcnow(), expires_at, site))

    def use_enrol_token(self, token_hash: str, now: str | None = None) -> str | None:
        """Consume a token atomically; return its device, or None if unknown/used/expired."""
        now = now or utcnow()

        def run(tx: Tx) -> str | None:
            row = tx.query_one("SELECT device, expires_at, used_at FROM enrol_tokens WHERE token_hash = ?",
                               (token_hash,))
            if row is None or row["used_at"] is not None or row["expires_at"] <= now:
                return None
            if tx.execute("UPDATE enrol_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                          (now, token_hash)) != 1:
                return None
            return row["device"]

        return self.write(run)

    def list_enrol_tokens(self, site: str | None = None) -> list[dict]:
        sql = "SELECT device, site, created_by, created_at, expires_at, used_at FROM enrol_tokens"
        if site is not None:
            return self.query(sql + " WHERE site = ? ORDER BY created_at DESC", (site,))
        return self.query(sql + " ORDER BY created_at DESC")

    # ------------------------------------------------------------------ technician alerts

    def raise_device_alert(self, kind: str, device: str, room: str | None, message: str,
                           site: str | None = None) -> dict | None:
        """Open a technician alert unless one of this kind is already open for the device."""
        alert = {"id": new_id(), "kind": kind, "site": site, "device": device, "room": room, "message": message,
                 "raised_at": utcnow(), "cleared_at": None}

        def run(tx: Tx) -> bool:
            if tx.query_one("SELECT id FROM device_alerts WHERE kind = ? AND device = ? AND cleared_at IS NULL",
                            (kind, device)):
                return False
            tx.execute("INSERT INTO device_alerts (id, kind, device, room, message, raised_at, site) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (alert["id"], kind, device, room, message, alert["raised_at"],
                                                        site))
            return True

        return alert if self.write(run) else None

    def clear_device_alerts(self, kind: str, device: str) -> int:
        return self.execute("UPDATE device_alerts SET cleared_at = ? WHERE kind = ? AND device = ? "
                            "AND cleared_at IS NULL", (utcnow(), kind, device))

    def list_device_alerts(self, open_only: bool = True, site: str | None = None) -> list[dict]:
        where, params = (["cleared_at IS NULL"] if open_only else []), []
        if site is not None:
            where.append("site = ?")
            params.append(site)
        sql = "SELECT * FROM device_alerts" + (" WHERE " + " AND ".join(where) if where else "")
        return self.query(sql + " ORDER BY raised_at DESC", params)
