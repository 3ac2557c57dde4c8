"""The config model technicians edit: site, key-stage profiles, rooms, device bootstrap.

One pydantic model per file kind.  Field descriptions double as the config reference
(docs/config.md is generated from this module and a test keeps it in step), and
``classroom-server config schema`` exports the JSON Schema editors use to autocomplete.
Validators give messages a technician can act on; cross-file checks live in tree.py.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date, time
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .words import BUILTIN, check_language, check_pupil_text

# --------------------------------------------------------------------------- values

_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TLD_RE = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")
_HHMM_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_USER_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEYWORD_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{2,62}$")

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Resolvers a device must never forward to: DESIGN.md rule 4 (the school's filtered
# upstream stays the filter of record).
PUBLIC_RESOLVERS = frozenset({
    "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112",
    "208.67.222.222", "208.67.220.220", "94.140.14.14", "94.140.15.15",
    "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111",
    "2606:4700:4700::1001", "2620:fe::fe", "2620:fe::9",
})


def check_id(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"{value!r} is not a valid id (use lowercase letters, digits and '-')")
    return value


def is_domain(value: str) -> bool:
    if not isinstance(value, str) or not value or len(value) > 253 or value != value.lower():
        return False
    labels = value.split(".")
    return len(labels) >= 2 and all(_LABEL_RE.match(label) for label in labels) and bool(_TLD_RE.match(labels[-1]))


def check_domain(value: str) -> str:
    if isinstance(value, str):
        if value.startswith("*."):
            raise ValueError(f"{value!r} is not a domain (write {value[2:]!r}: subdomains are always included)")
        if value != value.lower() and is_domain(value.lower()):
            raise ValueError(f"{value!r} is not a domain (write it in lowercase: {value.lower()!r})")
        if "://" in value or "/" in value:
            raise ValueError(f"{value!r} is not a domain (put addresses with a path under allow_urls)")
    if not is_domain(value):
        raise ValueError(f"{value!r} is not a domain")
    return value


def check_url_pattern(value: str) -> str:
    """Chromium URLAllowlist-style pattern: [scheme://]host[:port][/path]."""
    if not isinstance(value, str) or not value or value == "*" or " " in value:
        raise ValueError(f"{value!r} is not a URL pattern (like 'https://www.bbc.co.uk/bitesize')")
    text = value if "://" in value else "https://" + value
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{value!r} is not a URL pattern") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not a URL pattern (only http and https addresses)")
    host = (parts.hostname or "").lstrip(".")
    if not is_domain(host):
        raise ValueError(f"{value!r} is not a URL pattern ({host or 'no host'!r} is not a domain)")
    return value


def check_hhmm(value: str) -> str:
    if isinstance(value, str) and _HHMM_RE.match(value):
        hours, minutes = value.split(":")
        return f"{int(hours):02d}:{minutes}"
    raise ValueError(f"{value!r} is not a time of day (write it like '08:30')")


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        import difflib

        close = difflib.get_close_matches(value if isinstance(value, str) else "", sorted(available_timezones()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown timezone {value!r}{hint}") from None
    return value


def check_resolver(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    if str(address) in PUBLIC_RESOLVERS:
        raise ValueError(f"{value} is a public resolver; forward only to the school's filtered resolver")
    return str(address)


def check_url(schemes: tuple[str, ...]):
    def check(value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018
        except (ValueError, AttributeError, TypeError):
            raise ValueError(f"{value!r} is not a URL") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"{value!r} is not a URL (expected {' or '.join(s + '://host' for s in schemes)})")
        return value
    return check


def check_keyword(value: str) -> str:
    """A risk-list keyword: matched as a substring of a looked-up domain name."""
    if isinstance(value, str) and value != value.lower() and _KEYWORD_RE.match(value.lower()):
        raise ValueError(f"{value!r} is not a keyword (write it in lowercase: {value.lower()!r})")
    if not isinstance(value, str) or not _KEYWORD_RE.match(value):
        raise ValueError(f"{value!r} is not a keyword (3 to 63 of a-z, 0-9, '.', '-'; it is matched inside "
                         "domain names, which hold nothing else)")
    return value


def check_username(value: str) -> str:
    if not isinstance(value, str) or not _USER_RE.match(value):
        raise ValueError(f"{value!r} is not a staff username (lowercase letters, digits, '.', '_', '-')")
    return value


Id = Annotated[str, AfterValidator(check_id)]
Domain = Annotated[str, AfterValidator(check_domain)]
UrlPattern = Annotated[str, AfterValidator(check_url_pattern)]
HHMM = Annotated[str, AfterValidator(check_hhmm)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Username = Annotated[str, AfterValidator(check_username)]
Keyword = Annotated[str, AfterValidator(check_keyword)]
Resolver = Annotated[str, AfterValidator(check_resolver)]
Language = Annotated[str, AfterValidator(check_language)]
# Pupil-facing words: every sentence short enough for a five-year-old (words.py).
PupilText = Annotated[str, AfterValidator(check_pupil_text)]
MqttUrl = Annotated[str, AfterValidator(check_url(("mqtt", "mqtts")))]
HttpUrl = Annotated[str, AfterValidator(check_url(("http", "https")))]
# GPIO pins as gpiozero accepts them: a BCM number, or a name like "GPIO17" / "BOARD11".
Pin = Annotated[int | str, AfterValidator(lambda v: _check_pin(v))]


def _check_pin(value: int | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a GPIO pin")
    if isinstance(value, int):
        if not 0 <= value <= 27:
            raise ValueError(f"{value} is not a GPIO pin (BCM numbers run 0-27)")
        return value
    if not re.match(r"^(GPIO\d{1,2}|BCM\d{1,2}|BOARD\d{1,2}|J8:\d{1,2})$", value):
        raise ValueError(f"{value!r} is not a GPIO pin (use a BCM number like 17, or 'BOARD11')")
    return value


def hhmm_to_time(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


class Model(BaseModel):
    """Base: unknown keys are errors (with a did-you-mean), nothing is coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- site.yaml


class SchoolHours(Model):
    days: list[Weekday] = Field(default=["mon", "tue", "wed", "thu", "fri"],
                                description="School days. Devices lock outside these (out-of-hours lock).")
    start: HHMM = Field(default="08:00", description="When devices unlock, local time ('08:00').")
    end: HHMM = Field(default="16:00", description="When devices lock again, local time ('16:00').")

    @model_validator(mode="after")
    def _order(self):
        if hhmm_to_time(self.start) >= hhmm_to_time(self.end):
            raise ValueError(f"start {self.start} is not before end {self.end}")
        return self


class DateRange(Model):
    name: str = Field(description="What it is ('Autumn 2026', 'October half term', 'INSET day').")
    start: date = Field(description="First day, YYYY-MM-DD.")
    end: date = Field(description="Last day (inclusive), YYYY-MM-DD.")

    @model_validator(mode="after")
    def _order(self):
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class Broker(Model):
    url: MqttUrl = Field(description="MQTT broker, 'mqtts://host:8883' (TLS) or 'mqtt://host:1883'.")
    prefix: str = Field(default="classroom/v1", pattern=r"^[a-z0-9][a-z0-9/_-]*[a-z0-9]$",
                        description="Topic prefix for every message.")
    reconnect_max_seconds: float = Field(
        default=2.0, ge=0.5, le=300,
        description="Longest wait between reconnect attempts (jittered, from 0.05-0.2 s doubling up to this): "
                    "keep it low for a broker on the school LAN, so a device is back within it.")
    connect_timeout_seconds: float = Field(default=2.0, ge=0.5, le=60,
                                           description="Give up one connection attempt after this long.")
    keepalive_seconds: int = Field(default=30, ge=5, le=600,
                                   description="MQTT keepalive: a silent link is found dead within about twice this.")
    batch_events: int = Field(
        default=100, ge=1, le=100,
        description="A device sends its backlog of events (after an outage) in batches of up to this many per "
                    "message; live events always go one at a time. 1: never batch (docs/protocol.md, \"Batches\": "
                    "upgrade the collector before the devices, as a collector that does not read batches drops them).")


class Collector(Model):
    url: HttpUrl = Field(description="classroom-server base URL, 'https://classroom.school.lan'.")


class Contact(Model):
    name: str = Field(description="Person or desk, as staff know them.")
    role: Literal["dsl", "deputy-dsl", "headteacher", "office", "technician", "remote-learning"] = Field(
        description="Why they are contacted. remote-learning: told at once of a report made on a device "
                    "away from the school network (offsite), where no teacher in the room can see it.")
    staff: Username | None = Field(default=None, description="Their classroom-server username (receives escalations).")
    email: str | None = Field(default=None, description="Optional e-mail for the weekly digest and escalations.")
    phone: str | None = Field(default=None, description="Optional phone, shown to staff on escalation.")


class Escalation(Model):
    timeout_seconds: int = Field(default=60, ge=10, le=3600,
                                 description="Escalate a report nobody has acknowledged after this long.")
    contacts: list[Contact] = Field(min_length=1, description="Who an escalation goes to (DSL, office, ...).")


class Retention(Model):
    heartbeats_days: int = Field(default=14, ge=1, le=366, description="Keep device heartbeats this long.")
    blocked_days: int = Field(default=90, ge=7, le=3660, description="Keep blocked-attempt logs this long.")
    events_days: int = Field(default=365, ge=30, le=3660, description="Keep other device events (logins, locks, config) this long.")
    incidents_days: int | None = Field(default=None, ge=365,
                                       description="Keep closed incidents this long; empty = until the DSL deletes them.")
    audit_days: int = Field(default=2555, ge=365, description="Keep the audit log this long (default 7 years).")


class RiskList(Model):
    """One list of high-risk names (filtering.risk_lists): a blocked lookup that matches it is
    tagged with its ``id`` as the event's ``category`` (docs/filtering.md, "Risk lists")."""

    id: Id = Field(description="Category id blocked events are tagged with ('self-harm', 'adult', ...).")
    name: str = Field(min_length=1, max_length=80,
                      description="What the DSL reads ('Self-harm and suicide').")
    notify: bool = Field(default=True, description="Tell the DSL at once (escalation e-mail/webhook, at most one "
                         "message per device per list per 10 minutes); false: counted in the weekly report only.")
    domains: list[Domain] = Field(default=[], max_length=5000,
                                  description="Domains (with their subdomains) in this category.")
    keywords: list[Keyword] = Field(default=[], max_length=500,
                                    description="Words that put a domain in this category wherever they appear "
                                    "in its name ('suicide' matches 'how-to-suicide.example'). Pick words that "
                                    "are not inside ordinary ones ('sex' is inside 'essex').")

    @model_validator(mode="after")
    def _something(self):
        if not self.domains and not self.keywords:
            raise ValueError("give domains, keywords or both")
        return self


class Filtering(Model):
    upstream_dns: list[Resolver] = Field(min_length=1,
                                         description="The school's filtered resolver(s). Never a public resolver.")
    evidence_minutes: int = Field(default=10, ge=1, le=60,
                                  description="Domains resolved this long before a report are kept as evidence.")
    coalesce_seconds: int = Field(default=60, ge=1, le=3600,
                                  description="Repeats of one blocked domain within this window are one event.")
    override_default_minutes: int = Field(default=60, ge=1, le=480,
                                          description="Teacher 'allow for this lesson' lasts this long by default.")
    override_max_minutes: int = Field(default=240, ge=1, le=1440, description="Longest a teacher override may last.")
    block_quic: bool = Field(default=True, description="Also block QUIC (UDP 443) so browsers fall back to filtered TCP.")
    browser_proxy: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$",
        description="The school's web proxy as host:port, if browsers must use one; otherwise browsers are "
                    "locked to a direct connection so a pupil cannot set a proxy of their own.")
    allow_udp_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default=[], max_length=64,
        description="Outgoing UDP ports allowed besides DNS (to the device's dnsmasq), DHCP, NTP and mDNS "
                    "multicast; every other UDP port is refused so no resolver can be asked on an odd port.")
    risk_lists: list[RiskList] = Field(
        default=[], max_length=50,
        description="High-risk categories (self-harm, adult, extremism, weapons, drugs, gambling, the school's "
                    "own): a blocked lookup matching one is tagged with its id, counted by category in the weekly "
                    "report and, with notify, sent to the DSL at once. Examples only: the school's upstream "
                    "filter stays the filter of record. First matching list wins.")

    @field_validator("risk_lists")
    @classmethod
    def _unique_lists(cls, value: list[RiskList]) -> list[RiskList]:
        seen: set[str] = set()
        for item in value:
            if item.id in seen:
                raise ValueError(f"{item.id!r} is used by two risk lists; ids must be unique")
            seen.add(item.id)
        return value


class Offsite(Model):
    """site.offsite: devices taken off the school network (a laptop at home, a trip).  The
    filter stays allowlist-only; only the resolver it forwards allowed names to changes, and
    the broker the device reports to (docs/deploy-pi.md, "Off-site devices")."""

    upstream_dns: list[Resolver] = Field(
        min_length=1, max_length=4,
        description="The filtered resolver(s) a device forwards allowed names to while off-site (the trust's "
                    "public-facing filtered resolver). Never a public resolver; nftables lets dnsmasq reach "
                    "it only while the device is off-site.")
    broker_url: MqttUrl | None = Field(
        default=None, description="The trust's public-facing broker ('mqtts://broker.trust.example:8883') the "
        "device reports to while off-site; empty: events and reports stay queued until it is back at school.")
    leave_after_seconds: int = Field(
        default=60, ge=5, le=3600,
        description="Off-site when neither the school resolver answers nor the school broker takes a "
                    "connection for this long, and an off-site resolver answers.")
    return_after_seconds: int = Field(
        default=10, ge=1, le=3600,
        description="Back at school once the school resolver answers or the school broker takes a connection, "
                    "without a miss, for this long.")
    probe_seconds: int = Field(default=5, ge=1, le=300,
                               description="How often the device looks for the school network.")
    detect_by: list[Literal["resolver", "broker"]] = Field(
        default=["resolver", "broker"], min_length=1,
        description="What shows the school network is there: the school resolver answering (filtering."
                    "upstream_dns), the school broker (agent.yaml broker_url) taking a connection, or either. "
                    "Leave out broker if the school's broker is reachable from the internet.")

    @model_validator(mode="after")
    def _order(self):
        if self.probe_seconds > self.leave_after_seconds:
            raise ValueError(f"probe_seconds {self.probe_seconds} is longer than leave_after_seconds "
                             f"{self.leave_after_seconds}")
        return self


class Guard(Model):
    bypass_processes: list[str] = Field(
        default=["tor", "openvpn", "wireguard-go", "psiphon", "ultrasurf", "hotspotshield", "windscribe",
                 "protonvpn", "nordvpn", "expressvpn", "shadowsocks", "ss-local", "v2ray", "xray",
                 "privoxy", "squid", "opera", "brave", "vivaldi", "microsoft-edge", "google-chrome"],
        description="Process names treated as filtering bypass tools or unapproved browsers.")
    end_bypass_processes: bool = Field(default=True, description="End them as well as reporting them.")
    watch_mounts: list[str] = Field(default=["/media", "/run/media"], description="Removable media mount points to watch.")


class Staff(Model):
    accounts: list[Username] = Field(default=[], description="Staff login names on classroom devices.")
    groups: list[str] = Field(default=[], description="Unix groups whose members are staff (e.g. 'staff', or the "
                              "directory group the school's logins carry).")
    profile: Id | None = Field(default=None, description="Key stage profile a staff login gets instead of the "
                               "pupils' (a keystages/ file, usually mode: upstream); empty: staff logins keep "
                               "the room's profile.")


class Site(Model):
    """site.yaml: one per school."""

    site: Id = Field(description="Short id for the school, used in MQTT topics ('penny-acres').")
    school: str = Field(description="The school's name as staff know it.")
    timezone: Annotated[str, AfterValidator(check_timezone)] = Field(
        default="Europe/London", description="IANA timezone; clock changes are handled.")
    school_hours: SchoolHours = Field(default_factory=SchoolHours)
    out_of_hours_lock: bool = Field(default=True, description="Lock pupil devices outside school hours and terms.")
    terms: list[DateRange] = Field(min_length=1, description="Term dates. Devices lock outside terms.")
    closures: list[DateRange] = Field(default=[], description="Half terms, INSET days and bank holidays inside terms.")
    broker: Broker
    collector: Collector
    escalation: Escalation
    retention: Retention = Field(default_factory=Retention)
    filtering: Filtering
    guard: Guard = Field(default_factory=Guard)
    offsite: Offsite | None = Field(default=None, description="Devices off the school network (at home, on a "
                                    "trip): where they resolve and report. Empty: a device off-site resolves "
                                    "nothing and keeps its reports queued until it is back.")
    staff: Staff = Field(default_factory=Staff, description="How a device tells a staff login from a pupil's.")
    language: Language = Field(default="en", description="The language of pupil screens, and of key stages' "
                               "messages ('en', 'cy').")
    language_groups: dict[str, Language] = Field(
        default={}, description="Unix group -> language: pupils in the group see their screens in it "
        "(EAL learners: {polish-eal: pl}); the profile's translations give the words.")
    heartbeat_seconds: int = Field(default=30, ge=5, le=3600, description="How often devices send a heartbeat.")
    dark_after_minutes: int = Field(default=5, ge=1, le=1440,
                                    description="Tell technicians when a device is silent this long in school hours.")


# --------------------------------------------------------------------------- keystages/*.yaml


class Messages(Model):
    """Pupil-facing words. Short, kind, readable by a five-year-old: every sentence at most
    12 words and 80 characters (agent/config/words.py; docs/config.md, "Pupil words")."""

    report_raised: PupilText | None = Field(default=None, max_length=120,
                                            description="Shown on the blank screen after a report.")
    report_acknowledged: PupilText | None = Field(default=None, max_length=120,
                                                  description="Shown once a teacher has seen the report.")
    locked: PupilText | None = Field(default=None, max_length=120, description="Shown on an idle or staff lock.")
    out_of_hours: PupilText | None = Field(default=None, max_length=120,
                                           description="Shown when locked outside school hours.")
    blocked: PupilText | None = Field(default=None, max_length=160,
                                      description="Shown on the block page for a page that is not allowed.")
    monitoring_notice: PupilText | None = Field(default=None, max_length=160,
                                                description="Small notice that the device is monitored (always on screen).")
    acceptable_use: PupilText | None = Field(default=None, max_length=2000,
                                             description="Acceptable use rules, shown at first login each term (one rule a line).")
    screen_button: PupilText | None = Field(default=None, max_length=40,
                                            description="The words on the on-screen report button.")
    ask_teacher: PupilText | None = Field(default=None, max_length=40,
                                          description="The block page's button that asks the teacher to open the page.")
    asked_teacher: PupilText | None = Field(default=None, max_length=120,
                                            description="Shown on the block page once the teacher has been asked.")


# The English built-in words (agent/config/words.py has every shipped language).
DEFAULT_MESSAGES = BUILTIN["en"]


class Sound(Model):
    play: bool = Field(default=True, description="Play the short recorded message on the report, lock and "
                       "acceptable-use screens (a chime when the words are the school's own).")
    volume: int = Field(default=60, ge=0, le=100, description="Volume, 0-100 (per cent of full).")


class CheckDomains(Model):
    allowed: list[Domain] = Field(default=[], description="Must resolve on this profile (curriculum sites).")
    blocked: list[Domain] = Field(default=[], description="Must be blocked (social media, adult, gambling, test lists).")


class Profile(Model):
    """keystages/<id>.yaml: what a key stage may reach and how devices behave."""

    name: str = Field(description="Shown to staff ('Key Stage 1').")
    extends: Id | None = Field(default=None, description="Start from another profile and add to it.")
    allow_domains: list[Domain] = Field(default=[], description="Domains (with their subdomains) that may be resolved.")
    allow_urls: list[UrlPattern] = Field(default=[], description="Browser-level allowlist (Chromium URLAllowlist syntax).")
    safe_search: bool | None = Field(default=None, description="Force Google/Bing/DuckDuckGo safe search (default on).")
    youtube_restrict: Literal["strict", "moderate", "off"] | None = Field(
        default=None, description="YouTube restricted mode (default strict).")
    idle_lock_minutes: int | None = Field(default=None, ge=1, le=240, description="Lock after this long without input.")
    shared_login_allowed: bool | None = Field(default=None,
                                              description="Whether a shared class login is allowed (youngest only).")
    shared_accounts: list[Username] = Field(default=[], description="Account names that count as shared/generic.")
    messages: Messages = Field(default_factory=Messages)
    translations: dict[Language, Messages] = Field(
        default={}, description="The same keys as messages, in another language, by code ('cy', 'pl'): "
        "shown to a device or pupil in that language (site language, language_groups).")
    sound: Sound | None = Field(default=None, description="Recorded messages on pupil screens (default: "
                                "played, volume 60).")
    mode: Literal["allowlist", "upstream"] | None = Field(
        default=None, description="allowlist (default): only allow_domains resolve; upstream: the school's "
        "filter decides and block_domains are refused on top (older pupils learning to judge risk; "
        "blocked attempts are still logged).")
    block_domains: list[Domain] = Field(default=[], description="Refused on top of the school's filter "
                                        "(mode: upstream); subdomains included.")
    check: CheckDomains = Field(default_factory=CheckDomains, description="Domains for `classroom-agent filter check`.")


# --------------------------------------------------------------------------- rooms/*.yaml


class Hardware(Model):
    button_pin: Pin | None = Field(default=None, description="GPIO pin of the report button (BCM number).")
    led_pin: Pin | None = Field(default=None, description="GPIO pin of the button's LED, if fitted.")
    report_key: str | None = Field(default="ctrl+alt+r", description="Keyboard/switch key that also reports.")
    button_bounce_ms: int = Field(default=30, ge=20, le=50, description="Button debounce time.")
    press_hold_ms: int = Field(default=0, ge=0, le=3000,
                               description="A press counts only once the GPIO or on-screen button has been held "
                               "this long (stops accidental brushes; 0: at once).")
    screen_button: bool | None = Field(default=None, description="Show the on-screen \"I saw something\" button "
                                       "(default: on when there is no button_pin).")
    screen_button_corner: Literal["bottom-right", "bottom-left", "top-right", "top-left"] = Field(
        default="bottom-right", description="Where the on-screen button sits.")

    @model_validator(mode="after")
    def _distinct(self):
        if self.button_pin is not None and self.button_pin == self.led_pin:
            raise ValueError(f"button_pin and led_pin are both {self.button_pin}")
        return self


class Device(Model):
    id: Id = Field(description="Device id, unique across the school ('5b-pi-01').")
    seat: str = Field(default="", max_length=40, description="Where it sits, as the teacher says it ('Table 2').")
    kind: Literal["pi", "pc"] = Field(default="pi", description="Raspberry Pi kiosk or classroom PC.")
    key_stage: Id | None = Field(default=None, description="Override the room's key stage for this device.")
    language: Language | None = Field(default=None, description="This device's language, if not the room's.")
    hardware: Hardware = Field(default_factory=Hardware)


class ScheduleEntry(Model):
    name: str = Field(description="What happens ('After-school coding club').")
    days: list[Weekday] = Field(min_length=1)
    start: HHMM
    end: HHMM
    mode: Literal["open", "locked"] = Field(description="open: unlocked even out of hours; locked: locked even in hours.")
    key_stage: Id | None = Field(default=None, description="Profile during this slot, if different.")

    @model_validator(mode="after")
    def _order(self):
        if hhmm_to_time(self.start) >= hhmm_to_time(self.end):
            raise ValueError(f"start {self.start} is not before end {self.end}")
        return self


class Room(Model):
    """rooms/<room>.yaml: one classroom and its devices."""

    room: Id = Field(description="Room id; must match the file name.")
    name: str = Field(description="Shown to staff ('Year 5 Blue').")
    key_stage: Id = Field(description="Profile id from keystages/ ('ks2').")
    alert_staff: list[Username] = Field(min_length=1, description="Staff who get this room's report alerts.")
    escalation_timeout_seconds: int | None = Field(default=None, ge=10, le=3600,
                                                   description="Override the site's escalation timeout.")
    language: Language | None = Field(default=None, description="This room's language, if not the site's "
                                      "(a Welsh-medium class: 'cy').")
    devices: list[Device] = Field(default=[])
    schedule: list[ScheduleEntry] = Field(default=[], description="Room exceptions to school hours.")


# --------------------------------------------------------------------------- agent.yaml (on the device)


class AgentBootstrap(Model):
    """The small per-device file (/etc/classroom-safety/agent.yaml)."""

    @field_validator("staff_pin_hash")
    @classmethod
    def _no_pin_hash_here(cls, value):
        if value is not None:
            # agent.yaml is readable by the agent's group; a hash there can be cracked offline.
            raise ValueError("no longer read from agent.yaml, where the agent's group can read it; put it in "
                             "staff_pin_file (/etc/classroom-safety/staff-pin, mode 0600, owner the agent's user: "
                             "`classroom-agent hash-pin --out FILE`, or install-agent.sh --staff-pin-hash) "
                             "and delete this line")
        return value

    device: Id = Field(description="This device's id, as in its room file.")
    site: Id = Field(description="The school's site id.")
    broker_url: MqttUrl = Field(description="MQTT broker URL.")
    collector_url: HttpUrl = Field(description="classroom-server URL.")
    credentials: str = Field(default="/etc/classroom-safety/credentials.yaml",
                             description="File (mode 0600) holding username/password for broker and server.")
    ca_file: str | None = Field(default=None, description="CA certificate for TLS, if not the system store.")
    state_dir: str = Field(default="/var/lib/classroom-agent",
                           description="Outbox and cached config live here; one agent per state_dir (the outbox is locked).")
    control_socket: str = Field(default="/run/classroom-agent/control.sock",
                                description="Local socket for `classroom-agent press` and status.")
    control_group: str | None = Field(
        default="classroom-press",
        description="Group whose members may press the report button through control_socket, and do nothing "
        "else there: the desktop users. Never the agent's own group (which can read this file and the outbox).")
    config_dir: str | None = Field(default=None, description="Use a local config tree instead of the collector (demo/offline).")
    pin_factory: str | None = Field(default=None,
                                    description="gpiozero pin factory (lgpio, rpigpio, mock); default from GPIOZERO_PIN_FACTORY.")
    screen_backend: Literal["auto", "wayland", "swaylock", "x11", "headless"] = Field(
        default="auto", description="Report blank: wayland (layer-shell overlay with message and PIN), swaylock "
        "(Wayland without layer-shell: no message), x11 (Tk overlay), headless; auto detects.")
    session_user: str | None = Field(default=None, description="Desktop user whose screen is blanked; default: detected.")
    staff_pin_file: str | None = Field(
        default="/etc/classroom-safety/staff-pin",
        description="File (mode 0600, owned by the agent's user) with the staff PIN's hash from `classroom-agent "
        "hash-pin`; the PIN (6 to 12 digits) clears the blank and the lock on the device. No file: no PIN.")
    staff_pin_hash: str | None = Field(
        default=None, description="Refused: the PIN hash lives in staff_pin_file, which only the agent can read.")
    chromium_policy_dir: str = Field(default="/etc/chromium/policies/managed")
    chromium_native_hosts_dir: str | None = Field(
        default="/etc/chromium/native-messaging-hosts",
        description="Where the block page's \"Ask my teacher\" host is registered for Chromium; empty: no asking.")
    blockpage_dir: str = Field(default="/var/cache/classroom-agent/blockpage",
                               description="Where the block-page extension (signed with this device's own key) "
                               "is kept for the browser to install; the pupil's browser must be able to read it.")
    firefox_policy_dir: str = Field(default="/etc/firefox/policies",
                                    description="Where Firefox (Debian's firefox-esr too) reads policies.json.")
    dnsmasq_dir: str = Field(default="/run/classroom-agent/dnsmasq", description="Where the compiled dnsmasq config goes.")
    apply_nftables: bool = Field(default=True, description="Load the DNS-bypass nftables table when permitted.")
