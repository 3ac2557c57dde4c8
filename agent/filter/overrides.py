"""Teacher overrides: "allow this site for this lesson", persisted, expiring, audited.

``{"cmd": "allow", "domain", "minutes", "by", "reason"}`` opens one domain (and its
subdomains) on this device until it expires.  Without ``minutes`` it lasts
``filtering.override_default_minutes`` or until the end of the current lesson / school
day if that is sooner; more than ``filtering.override_max_minutes`` is refused, not
trimmed, so the teacher learns the limit.  A room-wide override is the same command sent
to every device of the room (the teacher client does that); each device handles its own.

Open overrides live in ``state_dir/filter-overrides.json`` (written atomically), so the
expiry survives an agent restart; an override that expired while the agent was down is
closed (and audited) as soon as the agent starts.

Every change is audited (DfE: all changes to the filtering policy are logged):
``OverrideAudit`` sends ``override_opened``, ``override_rejected`` and
``override_closed`` events, and logs a line for each.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from ..files import atomic_write
from ..config.schema import check_domain
from ..protocol import now_ts, parse_ts

log = logging.getLogger(__name__)

FILE_NAME = "filter-overrides.json"

# Opening one of these would open a whole slice of the web (every .co.uk site...).
PUBLIC_SUFFIXES = frozenset({
    "co.uk", "org.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk", "sch.uk", "ac.uk", "gov.uk", "nhs.uk",
    "police.uk", "com.au", "co.nz", "co.za", "com.br", "co.jp", "github.io", "blogspot.com",
    "appspot.com", "herokuapp.com", "netlify.app", "vercel.app", "pages.dev", "web.app",
})


class OverrideError(ValueError):
    """A command that cannot be honoured; str() is one line naming the field."""


@dataclass(frozen=True)
class Override:
    id: str
    domain: str
    opened: datetime
    expires: datetime
    by: str
    reason: str

    def to_json(self) -> dict:
        d = asdict(self)
        d["opened"], d["expires"] = now_ts(self.opened), now_ts(self.expires)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Override":
        return cls(id=str(d["id"]), domain=check_domain(d["domain"]), opened=parse_ts(d["opened"]),
                   expires=parse_ts(d["expires"]), by=str(d["by"]), reason=str(d.get("reason") or ""))


def parse_allow(cmd: dict, now: datetime, *, default_minutes: int, max_minutes: int,
                lesson_end: datetime | None = None) -> Override:
    """Validate an ``allow`` command into an Override.  Raises OverrideError."""
    if not isinstance(cmd, dict) or cmd.get("cmd") != "allow":
        raise OverrideError("cmd: expected 'allow'")
    domain = cmd.get("domain")
    if not isinstance(domain, str) or not domain.strip():
        raise OverrideError("domain: is required")
    domain = domain.strip().rstrip(".")
    try:
        check_domain(domain)
    except ValueError as exc:
        raise OverrideError(f"domain: {exc}") from None
    if domain in PUBLIC_SUFFIXES:
        raise OverrideError(f"domain: {domain!r} is a public suffix, not a site "
                            f"(name the site, e.g. 'example.{domain}')")
    by = cmd.get("by")
    if not isinstance(by, str) or not by.strip() or len(by) > 64:
        raise OverrideError("by: who allowed it is required (a staff username)")
    reason = cmd.get("reason")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > 200:
        raise OverrideError("reason: must be text of at most 200 characters")
    minutes = cmd.get("minutes")
    if minutes is None:
        expires = now + timedelta(minutes=default_minutes)
        if lesson_end is not None and now < lesson_end < expires:
            expires = lesson_end  # "until the end of the lesson" is the natural default
    else:
        if isinstance(minutes, bool) or not isinstance(minutes, int):
            raise OverrideError(f"minutes: {minutes!r} is not a whole number of minutes")
        if minutes < 1:
            raise OverrideError(f"minutes: {minutes} must be at least 1")
        if minutes > max_minutes:
            raise OverrideError(f"minutes: {minutes} is longer than the longest override allowed ({max_minutes})")
        expires = now + timedelta(minutes=minutes)
    return Override(id=str(uuid.uuid4()), domain=domain, opened=now, expires=expires, by=by.strip(),
                    reason=reason.strip())


class OverrideStore:
    """The open overrides of this device, kept in a JSON file under the state dir."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / FILE_NAME
        self._items: dict[str, Override] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable (%s); starting with no overrides (stricter, never looser)", self.path, exc)
            return
        for i, item in enumerate(raw.get("overrides", []) if isinstance(raw, dict) else []):
            try:
                ov = Override.from_json(item)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("%s: overrides[%d] ignored: %s", self.path, i, exc)
                continue
            self._items[ov.domain] = ov

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "overrides": [o.to_json() for o in self._items.values()]}
        atomic_write(self.path, json.dumps(data, indent=1), 0o600)

    def __len__(self) -> int:
        return len(self._items)

    def all(self) -> list[Override]:
        return sorted(self._items.values(), key=lambda o: o.expires)

    def domains(self) -> list[str]:
        return sorted(self._items)

    def get(self, domain: str) -> Override | None:
        return self._items.get(domain)

    def put(self, ov: Override) -> Override | None:
        """Open (or extend/replace) the override for ov.domain; returns the one it replaced."""
        previous = self._items.get(ov.domain)
        self._items[ov.domain] = ov
        self.save()
        return previous

    def remove(self, domain: str) -> Override | None:
        ov = self._items.pop(domain, None)
        if ov is not None:
            self.save()
        return ov

    def expired(self, now: datetime) -> list[Override]:
        """Remove and return the overrides whose time is up."""
        gone = [o for o in self._items.values() if o.expires <= now]
        if gone:
            for o in gone:
                del self._items[o.domain]
            self.save()
        return gone

    def next_expiry(self) -> datetime | None:
        return min((o.expires for o in self._items.values()), default=None)


class OverrideAudit:
    """The events and log lines of overrides' lives.  *emit*: the runtime's ``emit_event``;
    *profile*: the key stage the filter enforces now (None before its first policy);
    *can_emit*: whether an event can be addressed yet (the runtime has a policy)."""

    def __init__(self, emit: Callable[..., dict], profile: Callable[[], str | None],
                 can_emit: Callable[[], bool] = lambda: True):
        self.emit = emit
        self.profile = profile
        self.can_emit = can_emit

    def fields(self, ov: Override) -> dict:
        return {"override_id": ov.id, "domain": ov.domain, "by": ov.by, "reason": ov.reason,
                "opened": now_ts(ov.opened), "expires": now_ts(ov.expires), "profile": self.profile()}

    def opened(self, ov: Override, previous: Override | None) -> None:
        log.info("filter: %s opened %s until %s (%s)", ov.by, ov.domain, now_ts(ov.expires), ov.reason or "no reason")
        self.emit("override_opened", **self.fields(ov), replaces=previous.id if previous else None)

    def rejected(self, cmd, reason: str) -> None:
        domain = cmd.get("domain") if isinstance(cmd, dict) else None
        by = cmd.get("by") if isinstance(cmd, dict) else None
        domain = domain if isinstance(domain, str) else repr(domain)
        by = by if isinstance(by, str) else repr(by)
        # %r: a hostile payload must not forge extra log lines.
        log.warning("filter: allow %r from %r refused: %s", domain[:100], by[:64], " ".join(reason.split()))
        if self.can_emit():
            self.emit("override_rejected", domain=domain[:253], by=by[:64], error=reason)

    def closed(self, gone: list[Override], now: datetime) -> None:
        for ov in gone:
            log.info("filter: override for %s (by %s) expired", ov.domain, ov.by)
            self.emit("override_closed", **self.fields(ov), closed=now_ts(now), why="expired")
