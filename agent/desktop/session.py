"""Who is logged in, and THE way to run a program as them.

Sessions, best source first: systemd-logind (``loginctl list-sessions --output=json``
then ``loginctl show-session`` once per new session, for its type and display), else
utmp via ``psutil.users()`` (no systemd, containers, tests).  ``pick_desktop`` says
which session's screen is in front of the pupil; ``is_shared_account`` spots class and
device logins (``reception``, ``year5``, ``pi``...).  agent/policy/sessions.py turns
the readings into login/logout events.

Which user runs what (docs/architecture.md says the same):

* **The agent's own user** runs the overlays (the report blank, and staff and
  timetable locks): agent/desktop/overlay.py starts them directly, with ``agent_env``.
  The pupil cannot kill or signal a process of another user, and the session lets ours
  draw (scripts/session-grant.sh).  The libXss idle helper (programs/x11_idle.py) is
  ours too: it holds one display connection for the agent, like an overlay.
* **The session user** runs everything that must act inside the pupil's session:
  swaylock (the idle lock, and the fallbacks when the overlay cannot run), ``dm-tool
  lock``, swayidle, xprintidle, the AUP dialog, the monitoring notice, and the guard's
  look at that user's own programs (agent/policy/guard.py).  Always as
  ``as_session_user(user, session_env(session), argv)`` (``session_command`` wraps the
  two), through ``CommandRunner``: ``runuser`` as real root, ``setpriv`` with every
  capability dropped otherwise (the service runs as ``classroom-agent`` with
  CAP_SETUID/CAP_SETGID), and with exactly the session's environment, nothing of the
  agent's.  Only when no session is known at all (nobody in logind or utmp, no
  ``session_user`` in agent.yaml) does ``session_command`` run the program as the
  agent's own user with ``agent_env``: a developer's agent inside their own desktop,
  where a blank that may work beats none.

No other module builds a session prefix or a session environment.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import psutil

log = logging.getLogger(__name__)

__all__ = [
    "CommandRunner", "Session", "agent_env", "as_session_user", "is_shared_account", "pick_desktop", "read_sessions",
    "session_command", "session_env", "user_groups", "user_session",
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
    """THE command runner: every program the desktop code starts in a session (and
    loginctl) goes through one; tests swap in a recording runner to see the exact argv."""

    def run(self, argv: Sequence[str], timeout: float = 10.0, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def spawn(self, argv: Sequence[str], env: dict | None = None, stdin_text: str | None = None,
              stdin_path: str | None = None) -> subprocess.Popen:
        """*stdin_path*: a file the agent opens and hands over as the program's stdin, so a
        program run as the session user can read it where that user cannot (/dev/stdin)."""
        stdin = subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL
        handed = open(stdin_path, "rb") if stdin_path is not None else None
        try:
            proc = subprocess.Popen(
                list(argv), env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                stdin=handed if handed is not None else stdin, close_fds=True, start_new_session=True,
            )
        finally:
            if handed is not None:
                handed.close()
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


def session_command(session: Session | None, argv: Sequence[str],
                    extra: dict[str, str] | None = None) -> tuple[list[str], dict[str, str] | None]:
    """(argv, env) for the runner that run *argv* inside *session*, as its user.

    With a session: ``as_session_user(session.user, session_env(session, extra), argv)``
    and env None (the environment travels in argv).  With none known: *argv* itself, as
    the agent's own user, with ``agent_env(extra)`` (the module docstring says when)."""
    if session is None:
        return list(argv), agent_env(extra)
    return as_session_user(session.user, session_env(session, extra), argv), None


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a program the agent runs as itself on the display (an
    overlay): a PATH and the display variables the agent was given, nothing else."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for key in ("XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "DISPLAY", "XAUTHORITY"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def user_groups(user: str) -> list[str]:
    """The names of *user*'s unix groups (primary first), through NSS, so a school's
    directory groups (sssd, winbind) count as well as /etc/group; [] for an unknown user.
    The site's ``staff.groups`` and ``language_groups`` are matched against these."""
    import grp

    try:
        entry = pwd.getpwnam(user)
        gids = os.getgrouplist(user, entry.pw_gid)
    except (KeyError, OSError):
        return []
    names = []
    for gid in gids:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def user_session(user: str, type: str = "tty") -> Session | None:  # noqa: A002 - logind's word
    """A Session for *user* when only the name is known (agent.yaml's ``session_user``
    with no logind or utmp record for it); None if there is no such account."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.warning("session user %r does not exist", user)
        return None
    return Session(id=f"user-{user}", user=user, uid=entry.pw_uid, type=type)


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
