"""Acceptable use and the monitoring notice.

At a user's first login each term the profile's age-appropriate rules
(``policy.messages['acceptable_use']``) are shown with one big "I agree" button;
acceptance is recorded on disk (``state_dir/aup.json``: term -> user -> ts) and as an
``aup_accepted`` event.  A small notice (``policy.messages['monitoring_notice']``) stays
in a corner of the screen for the whole session: DfE expects users to be told that the
device is monitored.

This module decides when and records; showing is the desktop's ``Presenter``
(agent/desktop/base.py), the one the runtime built: Tk windows run as the desktop user
(agent/desktop/programs/aup_windows.py), so they appear on that user's screen and
nothing of the agent's privileges reaches them, or nothing at all on a headless device.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_write
from ..protocol import now_ts

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI
    from ..desktop.base import Presenter

log = logging.getLogger(__name__)

__all__ = ["AcceptableUse", "AupRecords", "term_key"]


def term_key(terms, day: date) -> str:
    """The term *day* falls in ('Autumn 2026'), else the academic term by month.

    Outside term (holiday clubs) the next term's name would be wrong, so the month rule
    applies: Sep-Dec autumn, Jan-Mar spring, Apr-Aug summer.
    """
    for term in terms or ():
        if term.start <= day <= term.end:
            return term.name
    season = "autumn" if day.month >= 9 else "spring" if day.month <= 3 else "summer"
    return f"{season} {day.year}"


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self._data, indent=1, sort_keys=True), 0o600)


class AcceptableUse:
    """Shows the rules and the notice for each desktop session (used by SessionsComponent).

    *presenter*: the runtime's desktop presenter unless given (tests give a fake)."""

    def __init__(self, runtime: RuntimeAPI, presenter: Presenter | None = None):
        self.runtime = runtime
        self.records = AupRecords(runtime.state_dir)
        self.presenter = presenter if presenter is not None else runtime.desktop.presenter
        self._notices: dict[str, object] = {}
        self._dialogs: dict[str, object] = {}

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
        for table in (self._notices, self._dialogs):
            for handle in table.values():
                self.presenter.close(handle)
            table.clear()
