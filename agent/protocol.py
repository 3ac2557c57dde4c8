"""The MQTT wire contract (DESIGN.md "Wire contract"): topics, payload shapes, validation.

Agent, collector, teacher client and broker ACLs all build and parse topics here, so
there is exactly one definition of the protocol.  Validation returns a one-line reason
naming the field, which callers log before dropping the message.

Two topic shapes besides the device's own ``{prefix}/{site}/{room}/{device}/{kind}``:

* ``{prefix}/{site}/{room}/{device}/reply/{staff}``: a teacher client's ack/clear to a
  device.  The broker lets a staff account publish only where the last level is its own
  username, so the device takes ``by`` from the topic, never from the payload.
* ``{prefix}/{site}/{room}/_watch/{staff}``: a receiver's presence for a room (retained,
  with the Last Will saying ``gone``), so the collector knows which rooms nobody is
  watching.  ``_watch`` cannot be a device id (ids never start with ``_``).
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PREFIX = "classroom/v1"
ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")
KINDS = ("status", "alert", "event", "heartbeat", "cmd")
QOS = {"status": 1, "alert": 1, "event": 1, "heartbeat": 0, "cmd": 1, "reply": 1, "watch": 1}
# Retained: the device's status (and Last Will), the latest transition of its alert, and a
# receiver's presence.  A receiver that (re)connects sees every open alert at once.
RETAINED = frozenset({"status", "alert", "watch"})
STAFF_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # staff usernames (agent/config/schema.py)
WATCH = "_watch"
REPLY = "reply"
REPLY_COMMANDS = ("ack", "clear")
WATCH_STATES = ("watching", "gone")
ALERT_STATES = ("raised", "acknowledged", "cleared", "escalated")
EVENT_TYPES = (
    "blocked", "report_evidence", "login", "logout", "lock", "unlock", "config_applied", "config_rejected",
    "tamper", "override_opened", "override_closed", "filter_check", "aup_accepted", "shared_login",
    "bypass_process", "removable_media", "press_repeated", "override_rejected", "state_degraded",
    "unblock_request", "unlock_refused", "cmd_result", "network_location",
)
# Where a device is (agent/uplink/location.py): on the school network, or off it (at home,
# on a trip).  A ``network_location`` event at each switch; a report raised off-site says so.
LOCATIONS = ("school", "offsite")
# hold / release: the DSL's hold on a device (agent/policy/lock.py), only ever from the collector.
COMMANDS = ("ack", "clear", "allow", "lock", "unlock", "reload-config", "filter-check", "message", "hold", "release")
# What a device says it did with a command that carried an ``id`` (a ``cmd_result`` event):
# done; refused (understood, will not: ``error`` says why); unsupported (nothing on this
# device handles it); failed (a fault on the device: ``error``).
CMD_RESULTS = ("done", "refused", "unsupported", "failed")
TEXT_MAX = 120       # a teacher's one-line message, or the words on an "Eyes on me" lock
LOCK_MINUTES_MAX = 60  # a timed lock ("Eyes on me") unlocks itself within the hour
MESSAGE_SECONDS = (5, 600)  # how long a message stays on the pupils' screens
MAX_PAYLOAD = 64 * 1024
# A backlog of events goes in batches (docs/protocol.md, "Batches"): after a reconnection
# the agent sends runs of its stored events as one message ``{"batch": [event, ...]}`` on
# its own event topic, oldest first, at most BATCH_MAX events and MAX_PAYLOAD bytes.  Why:
# every MQTT message costs each broker on the way and the collector the same whether it
# carries 300 bytes or 30 KB; a trust's bursts are backlogs (every device of a school
# after its link or the collector comes back), and bench/trust.py stores them 3-4x faster
# as batches of 100 (11,600-13,900 events/s one per message, 42,600-50,400 in batches, over 50
# bridges on 2 cores).  Live events still go one per message, at once.
BATCH_MAX = 100
BATCH_KEY = "batch"
# A command the broker has held longer than this is dropped (MQTT 5 message expiry, set by
# the collector): "Eyes on me", a message or an allow is meant for now, and must not land
# hours later when a school's bridge link or a device comes back.  Staff see what each
# device did (cmd_result) and send again.  A DSL's hold and its release do not expire: they
# must arrive, and the collector sends a hold again whenever the device comes back.
CMD_EXPIRY_SECONDS = 120
DURABLE_COMMANDS = ("hold", "release")


def cmd_expiry_seconds(payload: bytes) -> int | None:
    """How long the broker may keep this ``cmd`` payload (None: as long as it likes)."""
    try:
        cmd = json.loads(payload).get("cmd")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return CMD_EXPIRY_SECONDS
    return None if cmd in DURABLE_COMMANDS else CMD_EXPIRY_SECONDS
MAX_NUMBER = 2 ** 53  # every number in a payload fits a double exactly and a BIGINT column


class ProtocolError(ValueError):
    """A message that does not follow the contract; str() is a one-line reason."""


class CommandRefused(Exception):
    """Raised by a device component that understood a command and will not carry it out
    (an override longer than the school allows, a message with nobody logged in); str() is
    the one-line reason, sent back in the command's ``cmd_result``."""


@dataclass(frozen=True)
class Topic:
    prefix: str
    site: str
    room: str
    device: str
    kind: str

    def __str__(self) -> str:
        return f"{self.prefix}/{self.site}/{self.room}/{self.device}/{self.kind}"


# Topics repeat (a device has five; a collector sees each device's again and again), and
# both functions sit on the report's path on both sides of the broker: remember them.
@functools.lru_cache(maxsize=16384)
def topic(prefix: str, site: str, room: str, device: str, kind: str) -> str:
    for name, value in (("site", site), ("room", room), ("device", device)):
        if not ID_RE.match(value or ""):
            raise ProtocolError(f"{name}: {value!r} is not a valid id")
    if kind not in KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}")
    return f"{prefix}/{site}/{room}/{device}/{kind}"


@functools.lru_cache(maxsize=16384)
def parse_topic(text: str, prefix: str = DEFAULT_PREFIX) -> Topic:
    if not text.startswith(prefix + "/"):
        raise ProtocolError(f"topic {text!r} is not under {prefix!r}")
    parts = text[len(prefix) + 1:].split("/")
    if len(parts) != 4:
        raise ProtocolError(f"topic {text!r} is not {prefix}/SITE/ROOM/DEVICE/KIND")
    site, room, device, kind = parts
    for name, value in (("site", site), ("room", room), ("device", device)):
        if not ID_RE.match(value):
            raise ProtocolError(f"topic {text!r}: {name} {value!r} is not a valid id")
    if kind not in KINDS:
        raise ProtocolError(f"topic {text!r}: unknown kind {kind!r}")
    return Topic(prefix, site, room, device, kind)


@dataclass(frozen=True)
class StaffTopic:
    """A topic whose last level is a staff username: ``reply`` (to one device) or ``watch``
    (a room's receiver presence; ``device`` is None)."""

    prefix: str
    site: str
    room: str
    device: str | None
    kind: str
    staff: str


def _check_staff(staff: str) -> None:
    if not STAFF_RE.match(staff or ""):
        raise ProtocolError(f"staff: {staff!r} is not a staff username")


def reply_topic(prefix: str, site: str, room: str, device: str, staff: str) -> str:
    _check_staff(staff)
    return f"{topic(prefix, site, room, device, 'status').rsplit('/', 1)[0]}/{REPLY}/{staff}"


def watch_topic(prefix: str, site: str, room: str, staff: str) -> str:
    for name, value in (("site", site), ("room", room)):
        if not ID_RE.match(value or ""):
            raise ProtocolError(f"{name}: {value!r} is not a valid id")
    _check_staff(staff)
    return f"{prefix}/{site}/{room}/{WATCH}/{staff}"


def parse_staff_topic(text: str, prefix: str = DEFAULT_PREFIX) -> StaffTopic:
    """A reply or watch topic, or ProtocolError."""
    if not text.startswith(prefix + "/"):
        raise ProtocolError(f"topic {text!r} is not under {prefix!r}")
    parts = text[len(prefix) + 1:].split("/")
    if len(parts) == 4 and parts[2] == WATCH:
        site, room, _, staff = parts
        device, kind = None, "watch"
    elif len(parts) == 5 and parts[3] == REPLY:
        site, room, device, _, staff = parts
        kind = "reply"
        if not ID_RE.match(device):
            raise ProtocolError(f"topic {text!r}: device {device!r} is not a valid id")
    else:
        raise ProtocolError(f"topic {text!r} is not a reply or watch topic")
    for name, value in (("site", site), ("room", room)):
        if not ID_RE.match(value):
            raise ProtocolError(f"topic {text!r}: {name} {value!r} is not a valid id")
    if not STAFF_RE.match(staff):
        raise ProtocolError(f"topic {text!r}: {staff!r} is not a staff username")
    return StaffTopic(prefix, site, room, device, kind, staff)


def parse_broker_url(url: str, where: str = "broker") -> tuple[str, int, bool]:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` -> (host, port, tls); ProtocolError
    (a ValueError) naming *where* (a config key or a flag) otherwise."""
    parts = urlsplit(url if isinstance(url, str) else "")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ProtocolError(f"{where}: {url!r} is not an mqtt:// or mqtts:// URL")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ProtocolError(f"{where}: {url!r} has a bad port") from None
    return parts.hostname, port, tls


def now_ts(moment: datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds and a Z, as every payload's ts."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Times outside these years are refused: a ts of 9999-12-31 would never be purged by
# retention, one of 0001 sorts before everything.  (Alerts are never refused for a clock
# that is merely wrong inside this range: a Pi without an RTC boots in the past.)
TS_YEARS = (2000, 2100)


def parse_ts(value: Any, key: str = "ts") -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ProtocolError(f"{key}: {value!r:.50} is not an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError(f"{key}: {value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ProtocolError(f"{key}: {value!r} has no timezone")
    moment = moment.astimezone(timezone.utc)
    if not TS_YEARS[0] <= moment.year < TS_YEARS[1]:
        raise ProtocolError(f"{key}: {value!r} is outside {TS_YEARS[0]}-{TS_YEARS[1] - 1}")
    return moment


def new_id() -> str:
    return str(uuid.uuid4())


# One encoder: json.dumps with non-default options builds a new one for every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(payload: dict[str, Any]) -> bytes:
    return _ENCODER.encode(payload).encode("utf-8")


def decode(raw: bytes | str) -> dict[str, Any]:
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_PAYLOAD:
            raise ProtocolError(f"payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD}")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("payload is not UTF-8") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"payload must be a JSON object, not {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- validation


def _need(data: dict, key: str, kind: type | tuple, *, optional: bool = False):
    if key not in data or data[key] is None:
        if optional:
            return None
        raise ProtocolError(f"{key}: is required")
    value = data[key]
    if isinstance(value, bool) and kind is not bool and (kind is int or kind == (int, float)):
        raise ProtocolError(f"{key}: {value!r} is not a number")
    if (kind is int or kind == (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not (-MAX_NUMBER <= value <= MAX_NUMBER and (isinstance(value, int) or math.isfinite(value))):
        # 10**400 or 1e999 (inf) would overflow a BIGINT column or poison every sum.
        raise ProtocolError(f"{key}: {value!r:.40} is out of range")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(f"{key}: {value!r} is not a {names}")
    return value


def _need_id(data: dict, key: str, *, optional: bool = False):
    value = _need(data, key, str, optional=optional)
    if value is not None and not ID_RE.match(value):
        raise ProtocolError(f"{key}: {value!r} is not a valid id")
    return value


def _need_uuid(data: dict, key: str = "id") -> str:
    value = _need(data, key, str)
    try:
        uuid.UUID(value)
    except ValueError:
        raise ProtocolError(f"{key}: {value!r} is not a UUID") from None
    return value


def _same_place(data: dict, where: Topic | None) -> None:
    """A device may only speak about itself: payload ids must match its topic."""
    if where is None:
        return
    for key in ("site", "room", "device"):
        if key in data and data[key] != getattr(where, key):
            raise ProtocolError(f"{key}: {data[key]!r} does not match the topic ({getattr(where, key)!r})")


def validate_status(data: dict, where: Topic | None = None) -> dict:
    state = _need(data, "state", str)
    if state not in ("online", "offline"):
        raise ProtocolError(f"state: {state!r} is not 'online' or 'offline'")
    parse_ts(_need(data, "ts", str))
    _need(data, "agent_version", str, optional=True)
    _need(data, "config_version", str, optional=True)
    _need(data, "degraded", str, optional=True)  # a state file the agent cannot use, and why
    _need_location(data, "location", optional=True)
    return data


def _need_location(data: dict, key: str, *, optional: bool = False) -> str | None:
    value = _need(data, key, str, optional=optional)
    if value is not None and value not in LOCATIONS:
        raise ProtocolError(f"{key}: {value!r} is not one of {', '.join(LOCATIONS)}")
    return value


def validate_alert(data: dict, where: Topic | None = None) -> dict:
    _need_uuid(data)
    state = _need(data, "state", str)
    if state not in ALERT_STATES:
        raise ProtocolError(f"state: {state!r} is not one of {', '.join(ALERT_STATES)}")
    for key in ("site", "room", "device"):
        _need_id(data, key)
    _same_place(data, where)
    _need(data, "seat", str, optional=True)
    parse_ts(_need(data, "ts", str))
    _need(data, "by", str, optional=True)
    _need_location(data, "location", optional=True)  # "offsite": pressed away from the school network
    return data


def validate_event(data: dict, where: Topic | None = None) -> dict:
    _need_uuid(data)
    kind = _need(data, "type", str)
    if kind not in EVENT_TYPES:
        raise ProtocolError(f"type: {kind!r} is not a known event type")
    for key in ("site", "room", "device"):
        _need_id(data, key)
    _same_place(data, where)
    parse_ts(_need(data, "ts", str))
    if kind == "blocked":
        _need(data, "domain", str)
        _need(data, "profile", str)
        count = _need(data, "count", int, optional=True)
        if count is not None and not 1 <= count <= 1_000_000:
            raise ProtocolError(f"count: {count} is not between 1 and 1000000")
        _need_id(data, "category", optional=True)  # the risk list it matched (site.yaml ids)
    if kind == "unblock_request":
        # A pupil's "Ask my teacher" on the block page: the blocked page's domain, nothing else of it.
        domain = _need(data, "domain", str)
        from .config.schema import is_domain

        if not is_domain(domain):
            raise ProtocolError(f"domain: {domain!r} is not a domain")
    if kind == "cmd_result":
        _need_uuid(data, "cmd_id")
        _need(data, "cmd", str)
        result = _need(data, "result", str)
        if result not in CMD_RESULTS:
            raise ProtocolError(f"result: {result!r} is not one of {', '.join(CMD_RESULTS)}")
        _need(data, "error", str, optional=True)
    if kind == "network_location":
        _need_location(data, "location")
        _need_location(data, "previous")
        _need(data, "reason", str)
    if kind == "report_evidence":
        _need(data, "alert_id", str)
        domains = _need(data, "domains", list)
        for i, item in enumerate(domains):
            if not isinstance(item, dict) or not isinstance(item.get("domain"), str):
                raise ProtocolError(f"domains[{i}]: must be an object with a domain")
    return data


def is_batch(data: dict) -> bool:
    """An event-topic payload carrying several events (``{"batch": [...]}``), not one event."""
    return BATCH_KEY in data


def encode_batch(payloads: list[bytes]) -> bytes:
    """One batch message from already-encoded events (as stored in the outbox), unchanged."""
    return b'{"' + BATCH_KEY.encode() + b'":[' + b",".join(payloads) + b"]}"


def batch_events(data: dict, where: Topic | None = None) -> tuple[list[dict], list[str]]:
    """The events of a batch payload, each validated as an event of *where*:
    (the valid ones in order, a one-line reason for each one that is not).  A bad event
    costs only itself; a batch that is not a batch at all raises ProtocolError."""
    extra = sorted(set(data) - {BATCH_KEY})
    if extra:
        raise ProtocolError(f"{extra[0]}: a batch has no other key than {BATCH_KEY!r}")
    items = data[BATCH_KEY]
    if not isinstance(items, list) or not 1 <= len(items) <= BATCH_MAX:
        raise ProtocolError(f"{BATCH_KEY}: must be a list of 1 to {BATCH_MAX} events")
    good, bad = [], []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ProtocolError(f"must be a JSON object, not {type(item).__name__}")
            good.append(validate_event(item, where))
        except ProtocolError as exc:
            bad.append(f"{BATCH_KEY}[{i}]: {exc}")
    return good, bad


def validate_heartbeat(data: dict, where: Topic | None = None) -> dict:
    parse_ts(_need(data, "ts", str))
    for key in ("cpu", "mem", "temp", "uptime", "disk"):
        _need(data, key, (int, float), optional=True)
    _need(data, "user", str, optional=True)
    _need(data, "config_version", str, optional=True)
    return data


def _need_line(data: dict, key: str, *, optional: bool = False) -> str | None:
    """One line of text a pupil's screen shows: 1 to TEXT_MAX printable characters."""
    value = _need(data, key, str, optional=optional)
    if value is None:
        return None
    if not value.strip() or len(value) > TEXT_MAX:
        raise ProtocolError(f"{key}: must be 1 to {TEXT_MAX} characters, not {len(value)}")
    if not value.isprintable():
        raise ProtocolError(f"{key}: must be one line of printable text")
    return value


def validate_cmd(data: dict, where: Topic | None = None) -> dict:
    cmd = _need(data, "cmd", str)
    if cmd not in COMMANDS:
        raise ProtocolError(f"cmd: {cmd!r} is not one of {', '.join(COMMANDS)}")
    _need(data, "by", str)
    if "id" in data:
        # The collector's id for this command: the device answers with a cmd_result naming it.
        _need_uuid(data, "id")
    if cmd in ("ack", "clear"):
        _need_uuid(data, "alert_id")
    if cmd == "lock":
        minutes = _need(data, "minutes", int, optional=True)
        if minutes is not None and not 1 <= minutes <= LOCK_MINUTES_MAX:
            raise ProtocolError(f"minutes: {minutes} is not between 1 and {LOCK_MINUTES_MAX}")
        _need_line(data, "message", optional=True)
    if cmd == "message":
        _need_line(data, "text")
        seconds = _need(data, "seconds", int, optional=True)
        if seconds is not None and not MESSAGE_SECONDS[0] <= seconds <= MESSAGE_SECONDS[1]:
            raise ProtocolError(f"seconds: {seconds} is not between {MESSAGE_SECONDS[0]} and {MESSAGE_SECONDS[1]}")
    if cmd == "allow":
        domain = _need(data, "domain", str)
        from .config.schema import is_domain

        if not is_domain(domain):
            raise ProtocolError(f"domain: {domain!r} is not a domain")
        minutes = _need(data, "minutes", int, optional=True)
        if minutes is not None and not 1 <= minutes <= 1440:
            raise ProtocolError(f"minutes: {minutes} is not between 1 and 1440")
        _need(data, "reason", str, optional=True)
    if cmd in ("hold", "release"):
        _need_uuid(data, "hold_id")
        if cmd == "hold":
            _need(data, "incident", str, optional=True)
    return data


def validate_reply(data: dict, where: StaffTopic | None = None) -> dict:
    """A teacher client's ``{"cmd": "ack"|"clear", "alert_id"}``; any ``by`` in it is ignored
    (the sender is the topic's last level, which the broker ties to the account)."""
    cmd = _need(data, "cmd", str)
    if cmd not in REPLY_COMMANDS:
        raise ProtocolError(f"cmd: {cmd!r} is not one of {', '.join(REPLY_COMMANDS)}")
    _need_uuid(data, "alert_id")
    return data


def validate_watch(data: dict, where: StaffTopic | None = None) -> dict:
    """``{"state": "watching"|"gone", "ts", "client"}`` (client: what is watching, e.g.
    'classroom-alerts' or 'pager')."""
    state = _need(data, "state", str)
    if state not in WATCH_STATES:
        raise ProtocolError(f"state: {state!r} is not one of {', '.join(WATCH_STATES)}")
    parse_ts(_need(data, "ts", str))
    _need(data, "client", str, optional=True)
    return data


VALIDATORS = {
    "status": validate_status, "alert": validate_alert, "event": validate_event,
    "heartbeat": validate_heartbeat, "cmd": validate_cmd, "reply": validate_reply, "watch": validate_watch,
}


def validate(kind: str, data: dict, where: Topic | None = None) -> dict:
    """Validate a decoded payload of topic kind *kind*; raise ProtocolError."""
    return VALIDATORS[kind](data, where)


def parse_message(topic_text: str, raw: bytes, prefix: str = DEFAULT_PREFIX) -> tuple[Topic, dict]:
    """Topic + payload in, validated (Topic, dict) out, or ProtocolError."""
    where = parse_topic(topic_text, prefix)
    data = decode(raw)
    return where, validate(where.kind, data, where)


def parse_staff_message(topic_text: str, raw: bytes, prefix: str = DEFAULT_PREFIX) -> tuple[StaffTopic, dict]:
    """A reply or watch topic + payload in, validated (StaffTopic, dict) out, or ProtocolError."""
    where = parse_staff_topic(topic_text, prefix)
    data = decode(raw)
    return where, VALIDATORS[where.kind](data, where)
