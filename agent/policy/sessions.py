"""Logins and logouts as events, shared-account policy, and the AUP at login.

``SessionsComponent`` polls the system's session records (agent/desktop/session.py:
logind, else utmp) and turns differences between two readings into ``login`` /
``logout`` events carrying user, device (added by the runtime), ts and session id, which
is all the server needs to flag one user on two devices at once.  A shared or generic
account (``reception``, ``guest``, ``pi``...) on a profile that does not allow it also
raises ``shared_login``.  Each new local desktop session gets the monitoring notice and,
once a term, the acceptable-use rules (agent/policy/aup.py).

It is also the runtime's answer to "whose desktop is in front of the pupil"
(``desktop()``, ``current_user()``): the runtime is given it (``Runtime(sessions=...)``)
and hands that answer on to the desktop backends and the other components.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..desktop.session import CommandRunner, Session, is_shared_account, pick_desktop, read_sessions
from ..files import atomic_write
from .aup import AcceptableUse

log = logging.getLogger(__name__)

__all__ = ["SessionsComponent"]


@dataclass
class SessionsComponent:
    """Emits login/logout/shared_login, and runs the AUP + monitoring notice on login."""

    reader: Callable[[], list[Session]] | None = None
    poll_seconds: float = 15.0
    aup: AcceptableUse | None = None  # built at start from the runtime's desktop presenter
    name: str = "sessions"
    sessions: dict[str, Session] = field(default_factory=dict)

    def __post_init__(self):
        self.runtime = None
        self._timer = None
        self._stopped = False
        self._cache: dict[str, Session] = {}
        self._runner = CommandRunner()
        self._primed = False
        self._aup_started: set[str] = set()  # sessions whose notice/AUP this run has shown

    # -- Component (agent/core/interfaces.py)
    def start(self, runtime) -> None:
        self.runtime = runtime
        if self.aup is None:
            self.aup = AcceptableUse(runtime)
        self._load_known()
        if runtime.policy is not None:
            self._primed = True
            self.refresh()
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self.aup is not None:
            self.aup.close()

    def on_policy(self, policy) -> None:
        if not self._primed:
            # Components start before the first config is loaded; events need a room.
            self._primed = True
            self.refresh()

    def on_command(self, cmd: dict) -> bool:
        return False

    # -- SessionSource: what the runtime asks on behalf of everything else
    def desktop(self) -> Session | None:
        prefer = self.runtime.bootstrap.session_user if self.runtime is not None else None
        return pick_desktop(list(self.sessions.values()), prefer)

    def current_user(self) -> str | None:
        session = self.desktop()
        return session.user if session else None

    # -- work
    def _read(self) -> list[Session]:
        if self.reader is not None:
            return self.reader()
        return read_sessions(self._runner, self._cache)

    def _schedule(self) -> None:
        if not self._stopped:
            self._timer = self.runtime.call_later(self.poll_seconds, self._poll)

    def _poll(self) -> None:
        self._schedule()
        self.refresh()

    # A restarted agent must not report everyone as logging in again: the sessions it
    # has already reported are kept in state_dir (ids and users only).
    def _known_path(self) -> Path:
        return Path(self.runtime.state_dir) / "sessions.json"

    def _load_known(self) -> None:
        try:
            data = json.loads(self._known_path().read_text())
            self.sessions = {sid: Session(id=sid, user=str(v["user"]), type=str(v.get("type", "tty")))
                             for sid, v in data.items() if isinstance(v, dict) and "user" in v}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s unreadable (%s); current sessions will be reported as new", self._known_path(), exc)

    def _save_known(self) -> None:
        path = self._known_path()
        try:
            atomic_write(path, json.dumps({s.id: {"user": s.user, "type": s.type}
                                           for s in self.sessions.values()}), 0o600)
        except OSError as exc:
            log.warning("cannot save %s: %s", path, exc)

    def refresh(self) -> None:
        """Compare a fresh reading with the last one and report the difference (queue thread)."""
        try:
            now = {s.id: s for s in self._read()}
        except Exception as exc:  # noqa: BLE001 - a broken reading must not stop the agent
            log.warning("cannot read sessions: %s", exc)
            return
        changed = set(now) != set(self.sessions)
        before, self.sessions = self.sessions, now
        if changed:
            # Who is at the device decides the profile (a staff login) and the screens'
            # language (a pupil's language group): settled before the login's own screens.
            session_changed = getattr(self.runtime, "session_changed", None)
            if session_changed is not None:
                session_changed()
        for sid, session in now.items():
            if sid not in before:
                self._login(session)
            elif self.aup is not None and session.is_graphical and not session.remote \
                    and not self._primed_aup(sid):
                # Known from before a restart: the notice again, once (not every poll).
                self._aup_started.add(sid)
                self.aup.session_started(session)
        for sid, session in list(before.items()):
            if sid not in now:
                self.runtime.emit_event("logout", user=session.user, session=sid, session_type=session.type)
                if self.aup is not None:
                    self.aup.session_ended(session)
        self._aup_started.intersection_update(now)
        if changed:
            self._save_known()
        for sid in list(self._cache):
            if sid not in now:
                del self._cache[sid]

    def _primed_aup(self, sid: str) -> bool:
        return sid in self._aup_started

    def _login(self, session: Session) -> None:
        policy = self.runtime.policy
        shared = is_shared_account(session.user, getattr(policy, "shared_accounts", ()))
        self.runtime.emit_event("login", user=session.user, session=session.id, session_type=session.type,
                                tty=session.tty or session.display, remote=session.remote, shared=shared)
        if shared and not getattr(policy, "shared_login_allowed", False):
            self.runtime.emit_event("shared_login", user=session.user, session=session.id,
                                    key_stage=getattr(policy, "key_stage", None),
                                    reason="shared accounts are not allowed on this key stage")
        if self.aup is not None and session.is_graphical and not session.remote:
            self._aup_started.add(session.id)
            self.aup.session_started(session)
