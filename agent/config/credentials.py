"""Reading the secrets the commands are given: a device's credentials file and a
password file.  Both accept the YAML that ``classroom-server broker-config`` writes, so
one file serves the agent, the teacher client and the collector.  Never put a password
in an error message."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ..errors import UserError

log = logging.getLogger("agent.uplink.link")  # the agent's connection log, where this was always reported


def load_credentials(path: str | Path | None) -> tuple[str | None, str | None]:
    """(username, password) from the credentials YAML; (None, None) if the file is absent."""
    if not path:
        return None, None
    p = Path(path)
    if not p.exists():
        log.warning("%s: no credentials file; connecting without a username", p)
        return None, None
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{p}: cannot read credentials: {type(exc).__name__}") from None
    if not isinstance(data, dict) or not isinstance(data.get("username"), str) \
            or not isinstance(data.get("password"), str):
        raise UserError(f"{p}: credentials must be a mapping with username and password strings")
    return data["username"], data["password"]


def enrolled_room(path: str | Path | None, site: str) -> str | None:
    """The room the collector enrolled this device in (``room:`` in the credentials file
    ``classroom-agent enrol`` writes), if the file says so for this *site*; else None.
    Never raises: it only helps address a press made before the first config arrives."""
    if not path:
        return None
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or data.get("site") != site:
        return None
    room = data.get("room")
    return room if isinstance(room, str) and room else None


def read_password(path: str | Path) -> str:
    """The password from a file: a broker-config credentials YAML or a single line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read password file ({exc.strerror})") from None
    password = None
    if "password:" in text:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("password"), str):
            password = data["password"]
    if password is None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        password = lines[0] if lines else ""
    if not password:
        raise UserError(f"{path}: password file is empty")
    return password
