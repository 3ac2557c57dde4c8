"""Who is logged in: login/logout from the system's session records, and shared-login policy.

Sources, best first: systemd-logind (``loginctl list-sessions --output=json`` then
``loginctl show-session`` once per new session, for its type and display), else utmp
via ``psutil.users()`` (no systemd, containers, tests).  ``SessionsComponent`` turns
differences between two readings into ``login``/``logout`` events carrying user,
device (added by the runtime), ts and session id, which is all the server needs to
flag one user on two devices at once.  A shared or generic account (``reception``,
``guest``, ``pi``...) on a profile that does not allow it also raises ``shared_login``.

This module also owns running a program *as the desktop user* with the right
environment (``as_session_user``), used by the lock, idle and AUP code.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import psutil

from .files import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "CommandRunner", "Session", "SessionsComponent", "as_session_user", "is_shared_account", "read_sessions",
    "session_env",
]

# Account names that are generic whatever the profile lists: a class or device login
# rather than a person.  Profiles add their own (policy.shared_accounts).
GENERIC_ACCOUNTS = frozenset({
    "guest", "pupil", "pupils", "student", "students", "class", "classroom", "shared", "kiosk", "pi", "user",
    "reception", "nursery", "public",
})
_GENERIC_RE = re.compile(r"^(year|yr|class|y)[-_]?\d{1,2}[a-z]?$")
GRAPHICAL = ("x11", "wayland", "mir")
_warned = False


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    uid: int | None = None
    type: str = "tty"  # x11 | wayland | tty | unspecified
    display: str | None = None  # X11 display (":0"); Xwayland too on labwc
    seat: str | None = None
    tty: str | None = None
    remote: bool = False
    started: float | None = None  # epoch seconds
    leader: int | None = None

    @property
    def is_graphical(self) -> bool:
        return self.type in GRAPHICAL or (self.display or "").startswith(":")


# --------------------------------------------------------------------------- running commands


class CommandRunner:
    """Runs and spawns programs; tests swap in a recording runner to see the exact argv."""

    def run(self, argv: Sequence[str], timeout: float = 10.0, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def spawn(self, argv: Sequence[str], env: dict | None = None, stdin_text: str | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            list(argv), env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL, close_fds=True,
            start_new_session=True,
        )
        if stdin_text is not None:
            try:
                proc.stdin.write(stdin_text)
                proc.stdin.close()
            except OSError:
                pass
        return proc


def session_env(session: Session, extra: dict | None = None) -> dict[str, str]:
    """The environment a desktop program needs to reach *session*'s screen and bus."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": os.environ.get("LANG", "C.UTF-8")}
    try:
        entry = pwd.getpwnam(session.user)
        uid, home = entry.pw_uid, entry.pw_dir
    except KeyError:
        uid, home = session.uid, None
    if home:
        env.update(HOME=home, USER=session.user, LOGNAME=session.user)
        xauth = Path(home) / ".Xauthority"
        if xauth.exists():
            env["XAUTHORITY"] = str(xauth)
    if uid is not None:
        runtime_dir = f"/run/user/{uid}"
        env["XDG_RUNTIME_DIR"] = runtime_dir
        env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={runtime_dir}/bus"
        if session.type == "wayland":
            # labwc/wayfire take the first free name, nearly always wayland-0 (wayland-1 under a greeter).
            sockets = sorted(p.name for p in Path(runtime_dir).glob("wayland-*") if not p.name.endswith(".lock"))
            env["WAYLAND_DISPLAY"] = sockets[0] if sockets else "wayland-0"
    # X11 sessions, and Xwayland under labwc for Tk windows.
    env["DISPLAY"] = session.display if (session.display or "").startswith(":") else ":0"
    if session.seat:
        # dm-tool finds LightDM's seat through this; the path is LightDM's fixed layout.
        env["XDG_SEAT_PATH"] = f"/org/freedesktop/DisplayManager/{session.seat.capitalize()}"
    env.update(extra or {})
    return env


def as_session_user(user: str, env: dict[str, str], argv: Sequence[str]) -> list[str]:
    """argv that runs *argv* as *user* with exactly *env* (nothing of the agent's leaks).

    As real root (a technician running the agent by hand, the test machine) this is
    ``runuser -u USER -- env -i ...``.  The service itself runs as the unprivileged
    ``classroom-agent`` user holding CAP_SETUID/CAP_SETGID, where runuser refuses
    (it checks for uid 0); ``setpriv`` only needs the capabilities, and we make it drop
    the inheritable and ambient sets so the desktop program gets none of the agent's
    capabilities.
    """
    assignments = [f"{k}={v}" for k, v in sorted(env.items())]
    if os.getuid() == 0:
        return ["runuser", "-u", user, "--", "env", "-i", *assignments, *argv]
    return ["setpriv", f"--reuid={user}", f"--regid={_primary_gid(user)}", "--init-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--", "env", "-i", *assignments, *argv]


def _primary_gid(user: str) -> int | str:
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError:
        return user


# --------------------------------------------------------------------------- reading sessions


def _logind_available() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("loginctl") is not None


def _loginctl_sessions(runner: CommandRunner, cache: dict[str, Session]) -> list[Session]:
    out = runner.run(["loginctl", "list-sessions", "--no-legend", "--output=json"])
    if out.returncode != 0:
        raise OSError(f"loginctl list-sessions failed: {(out.stderr or '').strip()[:200]}")
    rows = json.loads(out.stdout or "[]")
    sessions = []
    for row in rows:
        sid = str(row.get("session"))
        if sid in cache:
            sessions.append(cache[sid])
            continue
        # Type and display are not in the list; ask once per session (they never change).
        props = {}
        show = runner.run(["loginctl", "show-session", sid, "-p", "Type", "-p", "Display", "-p", "Remote",
                           "-p", "Class", "-p", "Seat", "-p", "TTY", "-p", "Leader", "-p", "Timestamp"])
        for line in (show.stdout or "").splitlines():
            key, _, value = line.partition("=")
            props[key] = value
        if props.get("Class", "user") not in ("user", ""):
            continue  # greeters, lock screens, the user manager
        session = Session(
            id=sid, user=str(row.get("user")), uid=row.get("uid"), type=props.get("Type") or "tty",
            display=props.get("Display") or None, seat=row.get("seat") or props.get("Seat") or None,
            tty=row.get("tty") or props.get("TTY") or None, remote=props.get("Remote") == "yes",
            leader=int(props["Leader"]) if props.get("Leader", "").isdigit() else None,
        )
        cache[sid] = session
        sessions.append(session)
    return sessions


def _utmp_sessions() -> list[Session]:
    sessions = []
    for u in psutil.users():
        terminal = u.terminal or ""
        is_x = terminal.startswith(":")
        sessions.append(Session(
            id=f"utmp-{u.pid or terminal}-{int(u.started)}", user=u.name,
            type="x11" if is_x else "tty", display=terminal if is_x else None,
            tty=None if is_x else terminal or None, remote=bool(u.host) and not u.host.startswith(":"),
            started=u.started, leader=u.pid,
        ))
    return sessions


def read_sessions(runner: CommandRunner | None = None, cache: dict | None = None,
                  use_logind: bool | None = None) -> list[Session]:
    """The current user sessions, from logind when it runs, else utmp."""
    runner = runner or CommandRunner()
    if use_logind if use_logind is not None else _logind_available():
        try:
            return _loginctl_sessions(runner, {} if cache is None else cache)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # Once, not every poll: an old loginctl without JSON would fill the journal.
            (log.warning if not _warned else log.debug)("logind sessions unavailable (%s); reading utmp", exc)
            globals()["_warned"] = True
    return _utmp_sessions()


def is_shared_account(user: str, shared_accounts: Sequence[str] = ()) -> bool:
    name = user.lower()
    return name in shared_accounts or name in GENERIC_ACCOUNTS or bool(_GENERIC_RE.match(name))


def pick_desktop(sessions: Sequence[Session], prefer_user: str | None = None) -> Session | None:
    """The session whose screen is in front of the pupil: local, graphical, the named user first."""
    local = [s for s in sessions if not s.remote]
    ranked = sorted(local, key=lambda s: (s.user != prefer_user if prefer_user else False, not s.is_graphical,
                                          s.seat is None, -(s.started or 0)))
    return ranked[0] if ranked else None


# --------------------------------------------------------------------------- component


@dataclass
class SessionsComponent:
    """Emits login/logout/shared_login, and runs the AUP + monitoring notice on login."""

    reader: Callable[[], list[Session]] | None = None
    poll_seconds: float = 15.0
    aup: object | None = None  # agent.aup.AcceptableUse
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

    # -- runtime contract
    def start(self, runtime) -> None:
        self.runtime = runtime
        if self.aup is None:
            from .aup import AcceptableUse

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

    # -- queries other components use
    def desktop(self) -> Session | None:
        bootstrap = getattr(self.runtime, "bootstrap", None)
        return pick_desktop(list(self.sessions.values()), getattr(bootstrap, "session_user", None))

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
    def _known_path(self):
        from pathlib import Path

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
        for sid, session in now.items():
            if sid not in self.sessions:
                self._login(session)
            elif self.aup is not None and session.is_graphical and not session.remote \
                    and not self._primed_aup(sid):
                self.aup.session_started(session)  # known from before a restart: notice again
        for sid, session in list(self.sessions.items()):
            if sid not in now:
                self.runtime.emit_event("logout", user=session.user, session=sid, session_type=session.type)
                if self.aup is not None:
                    self.aup.session_ended(session)
        self.sessions = now
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
