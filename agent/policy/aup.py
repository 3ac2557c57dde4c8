"""Acceptable use and the monitoring notice.

At a user's first login each term the profile's age-appropriate rules
(``policy.messages['acceptable_use']``) are shown with one big "I agree" button;
acceptance is recorded on disk (``state_dir/aup.json``: term -> user -> ts) and as an
``aup_accepted`` event.  A small notice (``policy.messages['monitoring_notice']``) stays
in a corner of the screen for the whole session: DfE expects users to be told that the
device is monitored.

A pupil accepts once per term, not once per device: the collector keeps every acceptance
(server/store/aup.py) and ``AupSync`` fetches this term's names from it
(``GET {collector}/api/v1/devices/{id}/aup``, the device's own credentials) at start and
every ``SYNC_SECONDS``, into the same file, so a device that is offline later still knows
who has accepted elsewhere.  The fetch runs on its own thread; a collector that cannot be
reached changes nothing (the device then asks, the safe direction).

This module decides when and records; showing is the desktop's ``Presenter``
(agent/desktop/base.py), the one the runtime built: Tk windows run as the desktop user
(agent/desktop/programs/aup_windows.py), so they appear on that user's screen and
nothing of the agent's privileges reaches them, or nothing at all on a headless device.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.policy import term_key
from ..files import atomic_write
from ..protocol import now_ts

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI
    from ..desktop.base import Presenter

log = logging.getLogger(__name__)

__all__ = ["AcceptableUse", "AupRecords", "AupSync", "term_key"]

SYNC_SECONDS = 1800.0


class AupRecords:
    """Who accepted which term's rules; a small JSON file written atomically."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / "aup.json"
        self._data: dict[str, dict[str, str]] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self._data = {str(k): dict(v) for k, v in loaded.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # A damaged file means people see the rules again: the safe direction.
            log.warning("%s unreadable (%s); users will be asked to accept again", self.path, exc)

    def has_accepted(self, user: str, term: str) -> bool:
        return user in self._data.get(term, {})

    def record(self, user: str, term: str, ts: str) -> None:
        # Only this term's acceptances matter here (the server keeps the aup_accepted
        # events as the record), so earlier terms are dropped: data minimisation.
        self._data = {term: {**self._data.get(term, {}), user: ts}}
        self._save()

    def merge(self, term: str, accepted: dict[str, str]) -> int:
        """Add the collector's list of who accepted *term* (user -> ts); returns how many were new."""
        mine = self._data.get(term, {})
        new = {u: ts for u, ts in accepted.items() if u not in mine}
        if new or term not in self._data:
            self._data = {term: {**mine, **new}}
            self._save()
        return len(new)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self._data, indent=1, sort_keys=True), 0o600)


class AupSync:
    """Fetch this term's acceptances from the collector into *records* (see the module docstring).

    ``fetch()`` is one request (``(term, {user: ts})`` or None); ``start(on_list)`` runs it now
    and every *interval* seconds on a daemon thread, handing each list to *on_list*."""

    def __init__(self, url: str, auth: tuple[str, str] | None, verify, *, interval: float = SYNC_SECONDS,
                 timeout: float = 10.0) -> None:
        self.url = url
        self.auth = auth
        self.verify = verify
        self.interval = interval
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_bootstrap(cls, bootstrap) -> "AupSync | None":
        """From agent.yaml (collector URL, device id, credentials file, CA); None without them."""
        url = getattr(bootstrap, "collector_url", None)
        device = getattr(bootstrap, "device", None)
        if not url or not device:
            return None
        try:
            from ..config.credentials import load_credentials

            username, password = load_credentials(bootstrap.credentials)
        except Exception:  # noqa: BLE001 - no credentials yet (not enrolled): nothing to fetch with
            return None
        if not username or not password:
            return None
        return cls(f"{str(url).rstrip('/')}/api/v1/devices/{device}/aup", (username, password),
                   getattr(bootstrap, "ca_file", None) or True)

    def fetch(self) -> tuple[str, dict[str, str]] | None:
        import requests

        try:
            response = requests.get(self.url, auth=self.auth, verify=self.verify, timeout=self.timeout)
            if response.status_code != 200:
                log.info("aup: the collector answered %s for this term's acceptances", response.status_code)
                return None
            data = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.info("aup: could not fetch this term's acceptances (%s); keeping what we have", type(exc).__name__)
            return None
        term, users = data.get("term"), data.get("accepted")
        if not isinstance(term, str) or not isinstance(users, dict):
            return None
        return term, {u: ts for u, ts in users.items() if isinstance(u, str) and isinstance(ts, str)}

    def start(self, on_list) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                got = self.fetch()
                if got is not None:
                    on_list(*got)
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=loop, name="aup-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class AcceptableUse:
    """Shows the rules and the notice for each desktop session (used by SessionsComponent).

    *presenter*: the runtime's desktop presenter unless given (tests give a fake)."""

    def __init__(self, runtime: RuntimeAPI, presenter: Presenter | None = None):
        self.runtime = runtime
        self.records = AupRecords(runtime.state_dir)
        self.presenter = presenter if presenter is not None else runtime.desktop.presenter
        self._notices: dict[str, object] = {}
        self._dialogs: dict[str, object] = {}
        self.sync = AupSync.from_bootstrap(getattr(runtime, "bootstrap", None))
        if self.sync is not None:
            # The list arrives on the sync thread; the records belong to the runtime's thread.
            self.sync.start(lambda term, users: self.runtime.post(self._merge, term, users))

    def _merge(self, term: str, users: dict[str, str]) -> None:
        new = self.records.merge(term, users)
        if new:
            log.info("aup: %d pupil(s) accepted this term's rules on other devices", new)

    def _terms(self):
        tree = self.runtime.tree
        return tree.site.terms if tree is not None else None

    def session_started(self, session) -> None:
        policy = self.runtime.policy
        messages = getattr(policy, "messages", {}) or {}
        notice = messages.get("monitoring_notice")
        if notice:
            self._notices[session.id] = self.presenter.notice(session, notice)
        term = term_key(self._terms(), self.runtime.clock().date())
        text = messages.get("acceptable_use")
        if text and not self.records.has_accepted(session.user, term) and session.id not in self._dialogs:
            def accepted(session=session, term=term):
                self.runtime.post(self._accepted, session, term)

            self._dialogs[session.id] = self.presenter.dialog(session, text, accepted)
            say = getattr(self.runtime, "say", None)
            if say is not None:
                say("acceptable_use")  # the rules read aloud, for children who cannot read them yet

    def _accepted(self, session, term: str) -> None:
        self._dialogs.pop(session.id, None)
        if self.records.has_accepted(session.user, term):
            return
        self.records.record(session.user, term, now_ts(self.runtime.clock()))
        self.runtime.emit_event("aup_accepted", user=session.user, term=term, session=session.id,
                                key_stage=getattr(self.runtime.policy, "key_stage", None))

    def session_ended(self, session) -> None:
        for table in (self._notices, self._dialogs):
            handle = table.pop(session.id, None)
            if handle is not None:
                self.presenter.close(handle)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.stop()
        for table in (self._notices, self._dialogs):
            for handle in table.values():
                self.presenter.close(handle)
            table.clear()
