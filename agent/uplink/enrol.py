"""Device enrolment: redeem a one-time token at the collector for this device's own credentials.

``classroom-agent enrol --collector URL --token TOKEN [--config agent.yaml]`` POSTs the token
to ``{collector}/api/v1/enrol`` (server/devices.py) and writes what comes back, once, to
the device's credentials file (agent.yaml ``credentials``, default
/etc/classroom-safety/credentials.yaml): mode 0600, and owned by the agent's own user when
run as root, so only the agent can read its password.  The same username and password work
for the broker and the collector (the collector keeps an argon2 hash and a mosquitto
``$7$`` hash; ``classroom-server broker-config --db`` puts the latter in the broker's
password file).

The file also records the device's ``site`` and ``room`` when the collector knows them, so
a press before the first config is sent with the room it was enrolled in.

Every failure is one line that says what to do (a bad URL, an unreachable collector, a
certificate it cannot check, a token that is wrong, used or expired) and writes nothing.
The token is never printed or logged.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from urllib.parse import urlsplit

import requests
import yaml

from ..errors import UserError
from ..files import atomic_write

ENROL_PATH = "/api/v1/enrol"
DEFAULT_OWNER = "classroom-agent"
DEFAULT_CREDENTIALS = "/etc/classroom-safety/credentials.yaml"


def check_collector_url(url: str) -> str:
    parts = urlsplit(url or "")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UserError(f"--collector: {url!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--collector: {url!r} is not an http(s):// URL (e.g. https://classroom.school.sch.uk)")
    return url.rstrip("/")


def _reason(exc: requests.RequestException) -> str:
    """What went wrong under a requests failure, in a few words (never the whole URL chain)."""
    texts, seen, inner = [], set(), exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        texts.append(str(inner))
        inner = inner.__cause__ or inner.__context__
    text = " ".join(texts)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out",
                   "certificate verify failed", "Temporary failure in name resolution", "Network is unreachable"):
        if marker in text:
            return marker
    return type(exc).__name__


def redeem(collector: str, token: str, *, ca_file: str | None = None, timeout: float = 20.0,
           session: requests.Session | None = None) -> dict:
    """POST the token; the collector's answer (username, password, site, room, ...) or UserError."""
    collector = check_collector_url(collector)
    token = (token or "").strip()
    if not token:
        raise UserError("--token: empty; give the token `classroom-server enrol-token` printed")
    if ca_file and not Path(ca_file).is_file():
        raise UserError(f"--ca-file: {ca_file}: no such file")
    http = session or requests.Session()
    try:
        response = http.post(collector + ENROL_PATH, json={"token": token}, timeout=timeout,
                             verify=ca_file or True, allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        hint = "" if ca_file else "; give the school's CA certificate with --ca-file"
        raise UserError(f"cannot check the collector's certificate at {collector} ({_reason(exc)}){hint}") from None
    except requests.RequestException as exc:
        raise UserError(f"cannot reach the collector at {collector} ({_reason(exc)}); check the address and "
                        "the network") from None
    if response.status_code in (403, 422):
        detail = _detail(response) if response.status_code == 403 else ""
        raise UserError(detail or "token: not valid, already used or expired; ask a technician for a new one")
    if response.status_code == 404:
        raise UserError(f"{collector} is not a classroom-server (no {ENROL_PATH}); check --collector")
    if response.status_code != 200:
        raise UserError(f"the collector at {collector} answered HTTP {response.status_code}; try again, or ask "
                        "the technician to look at its log")
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("username"), str) \
            or not isinstance(data.get("password"), str) or not data["password"]:
        raise UserError(f"the collector at {collector} did not answer with credentials; check --collector")
    return data


def _detail(response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    return detail if isinstance(detail, str) and len(detail) < 300 else ""


def credentials_text(data: dict, collector: str) -> str:
    body = {"username": data["username"], "password": data["password"]}
    for key in ("site", "room"):
        if isinstance(data.get(key), str) and data[key]:
            body[key] = data[key]  # what the device knows before its first config
    return (f"# classroom-agent credentials for {data['username']}, from enrolment at {collector}.\n"
            "# The agent's own password for the broker and the collector: keep this file 0600.\n"
            + yaml.safe_dump(body, sort_keys=False))


def resolve_owner(owner: str | None) -> tuple[int, int, str] | None:
    """(uid, gid, name) to own the file, or None to leave it as the current user's.

    As root the default is the agent's user (``classroom-agent``); a root-owned 0600 file
    would be unreadable to the agent."""
    if os.geteuid() != 0:
        if owner and owner != pwd.getpwuid(os.geteuid()).pw_name:
            raise UserError(f"--owner {owner}: only root can give the file to another user")
        return None
    name = owner or DEFAULT_OWNER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        hint = "" if owner else " (the user the agent runs as; scripts/install-agent.sh creates it)"
        raise UserError(f"--owner: no user {name!r}{hint}; give --owner USER") from None
    return entry.pw_uid, entry.pw_gid, name


def write_credentials(path: str | Path, text: str, owner: tuple[int, int, str] | None) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such folder for the credentials file")
    try:
        atomic_write(path, text, 0o600)
        if owner is not None:
            os.chown(path, owner[0], owner[1])
    except OSError as exc:
        raise UserError(f"{path}: cannot write the credentials ({exc.strerror or exc})") from None
