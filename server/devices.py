"""Devices: enrolment, the registry, online/offline, and dark-device alerts for technicians.

Enrolment: a technician creates a one-time token for a device id (only its SHA-256 is
stored, it expires); the device POSTs it to ``/api/v1/enrol`` and receives its own
credentials: username = device id and a random password, used for both the broker and
the collector.  The server keeps an argon2 hash (collector logins) and a mosquitto
``$7$`` PBKDF2-SHA512 hash (so ``classroom-server broker-config`` can write the broker's
password file) -- never the password itself.

Online/offline comes from the retained ``status`` topic and its Last Will (ingested by
server/ingest into ``devices.status``).  ``DarkChecker`` runs in the server: a device
silent for more than ``site.dark_after_minutes`` while its room is in school hours
(``effective_policy(...).in_school_hours``) raises a technician alert (dashboard/API)
and an audit entry; the alert clears when the device is heard again.

A collector may serve several schools (server/sites.py): a token is made for a device
of the technician's own school's tree and remembers that site, enrolment answers with
the device's own school's broker and collector, and the dark check runs over every
school's tree, each alert and audit entry carrying its site.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from agent.config import effective_policy
from agent.protocol import parse_ts

from .http.auth import device_cache, hash_device_secret, new_token, token_hash
from .sites import trees_of
from .store import Store, iso

log = logging.getLogger(__name__)

TOKEN_HOURS = 72


class EnrolError(ValueError):
    """Enrolment refused; str() is safe to show."""


def mosquitto_hash(password: str, iterations: int = 101) -> str:
    """A mosquitto_passwd-compatible ``$7$`` (PBKDF2-SHA512) hash."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def create_enrol_token(store: Store, device: str, actor: str, tree=None, hours: int = TOKEN_HOURS,
                       now: datetime | None = None) -> dict:
    from agent.config.schema import check_id

    try:
        check_id(device)
    except ValueError as exc:
        raise EnrolError(f"device: {exc}") from None
    if tree is not None and device not in tree.device_ids():
        raise EnrolError(f"device: {device!r} is not in any room file of the live config")
    site = tree.site.site if tree is not None else None
    if not 1 <= hours <= 24 * 30:
        raise EnrolError("hours: must be between 1 and 720")
    token = new_token()
    expires = (now or datetime.now(timezone.utc)) + timedelta(hours=hours)
    store.add_enrol_token(token_hash(token), device, actor, iso(expires), site=site)
    store.audit(actor, "enrol-token.create", device, {"expires_at": iso(expires)}, site=site)
    return {"device": device, "token": token, "expires_at": iso(expires)}


def enrol(store: Store, token: str, tree=None) -> dict:
    """Exchange a one-time token for the device's credentials (returned once, never stored).
    *tree* is the live config tree, or every school's (server.sites.Sites): the device's
    own school's is used."""
    if not isinstance(token, str) or not 16 <= len(token) <= 200:
        raise EnrolError("token: not valid")
    device = store.use_enrol_token(token_hash(token))
    if device is None:
        raise EnrolError("token: not valid, already used or expired; ask a technician for a new one")
    password = secrets.token_urlsafe(24)
    site = room = None
    if tree is not None and hasattr(tree, "tree_for_device"):
        tree = tree.tree_for_device(device)
    if tree is not None:
        try:
            room_obj, _ = tree.find_device(device)
            site, room = tree.site.site, room_obj.room
        except Exception:  # noqa: BLE001 - device may have been removed since the token was made
            pass
    if room is None:  # not in the live tree: the registry may know where it was last heard
        known = store.get_device(device) or {}
        site, room = site or known.get("site"), known.get("room")
    store.set_device_credentials(device, hash_device_secret(password), by="enrol-token", site=site, room=room,
                                 mqtt_hash=mosquitto_hash(password))
    device_cache.forget_device(device)
    store.audit(f"device:{device}", "device.enrol", device, {"site": site, "room": room}, site=site)
    # site and room: what the device sends a press with before its first config arrives.
    result = {"device": device, "username": device, "password": password, "site": site, "room": room}
    if tree is not None:
        result.update({"site": tree.site.site, "broker_url": tree.site.broker.url,
                       "prefix": tree.site.broker.prefix, "collector_url": tree.site.collector.url})
    return result


def device_view(row: dict, now: datetime, dark_after: timedelta | None) -> dict:
    out = {k: v for k, v in row.items() if k not in ("password_hash", "mqtt_hash")}
    out["is_online"] = row.get("status") == "online"
    last = row.get("last_seen")
    out["is_silent"] = bool(dark_after and last and parse_ts(last) < now - dark_after)
    return out


class DarkChecker:
    """Every minute: raise/clear 'dark' technician alerts.  ``check(now)`` is the unit of work."""

    def __init__(self, store: Store, tree_source: Callable[[], object], interval: float = 60.0,
                 on_alert: Callable[[dict], None] | None = None) -> None:
        # tree_source(): the live tree, or every school's (an iterable of trees).
        self.store = store
        self.tree_source = tree_source
        self.interval = interval
        self.on_alert = on_alert
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, now: datetime | None = None) -> list[dict]:
        now = now or datetime.now(timezone.utc)
        raised: list[dict] = []
        for tree in trees_of(self.tree_source()):
            raised += self._check_site(tree, now)
        return raised

    def _check_site(self, tree, now: datetime) -> list[dict]:
        site = tree.site.site
        limit = timedelta(minutes=tree.site.dark_after_minutes)
        # Device ids are unique across schools: the tree says which are this school's.
        known = {row["id"]: row for row in self.store.list_devices()}
        raised = []
        for device in tree.device_ids():
            row = known.get(device)
            room_obj, _ = tree.find_device(device)
            last = row.get("last_seen") if row else None
            silent = last is None or parse_ts(last) < now - limit
            if not silent:
                if self.store.clear_device_alerts("dark", device):
                    self.store.audit("system", "device.dark.cleared", device, {"last_seen": last}, site=site)
                continue
            try:
                in_hours = effective_policy(tree, device, now).in_school_hours
            except Exception as exc:  # noqa: BLE001 - one bad device must not stop the sweep
                log.warning("dark check: %s: %s", device, exc)
                continue
            if not in_hours:
                continue
            since = f"since {last}" if last else "and has never been heard from"
            message = (f"{device} in room {room_obj.room} has been silent for more than "
                       f"{tree.site.dark_after_minutes} minutes during school hours ({since})")
            alert = self.store.raise_device_alert("dark", device, room_obj.room, message, site=site)
            if alert:
                self.store.audit("system", "device.dark", device, {"last_seen": last, "room": room_obj.room},
                                 site=site)
                log.warning("dark device: %s", message)
                raised.append(alert)
                if self.on_alert:
                    try:
                        self.on_alert(alert)
                    except Exception:  # noqa: BLE001
                        log.exception("dark alert listener failed")
        return raised

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dark-checker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - keep checking next minute
                log.exception("dark-device check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
