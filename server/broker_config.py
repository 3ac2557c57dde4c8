"""Broker security: mosquitto.conf, the password file and the ACL, generated from the config tree.

``classroom-server broker-config --config DIR --out OUT [--users FILE]`` writes:

* ``OUT/mosquitto.conf``: listener (TLS when certificates are given), ``allow_anonymous false``,
  ``password_file`` and ``acl_file`` pointing at the two files below, persistence.
* ``OUT/passwd``: mosquitto 2 password file (PBKDF2-SHA512, ``$7$``), made by ``mosquitto_passwd -U``
  when installed, else hashed here in the same format.
* ``OUT/acl``: one ``user`` block per account, derived from the device registry (DESIGN.md
  "Broker ACLs"): a device writes only under its own ``{device}`` level and reads only its own
  ``cmd`` and ``reply/+``; a teacher reads ``alert``/``status`` of the rooms where they are in
  ``alert_staff`` and writes there only ``.../+/reply/<their username>`` (ack/clear: the device
  takes ``by`` from that last level) and their own presence ``.../_watch/<their username>``;
  escalation contacts read every room's alerts and reply in every room under their own name;
  only the server (the collector) writes ``cmd`` and reads ``event``.  With ``--db``, staff
  the imported timetable has teaching in a room (or the office's cover, from today on) get
  that room's teacher rules too, at every hour of the week: mosquitto's ACL has no clock,
  so the dashboard holds them to their lesson times and the broker to their rooms
  (docs/broker.md, "Timetabled teachers", has the trade-off).
* ``OUT/credentials/<user>.yaml`` (0600): ``username`` + ``password`` per account, to copy onto a
  device (agent ``credentials``) or hand to a member of staff (``classroom-alerts --password-file``).

For a trust of schools (docs/broker.md, "Bridging a trust's schools"; docs/scaling.md):

* ``--central --config A --config B ...`` writes the trust's central broker instead: a bridge
  account per school, ``bridge-<site>``, that may read and write only under its own
  ``{prefix}/{site}/#`` (a compromised school broker cannot reach another school's topics), the
  collector's ingest workers, and each school's staff with their school rules.  No devices:
  they log in to their school's broker.
* ``--bridge-to URL --bridge-credentials FILE [--bridge-ca-file CA]`` adds to a school's
  mosquitto.conf its bridge to the central broker: TLS, the school's own bridge account,
  persistent sessions on both sides so what is to go out is queued while the link is down
  (``MAX_QUEUED``), and only the school's own topics: out what devices and staff write
  (``BRIDGE_OUT``), in only the collector's commands to its devices (``BRIDGE_IN``).

Passwords come from ``--users`` (YAML ``username: password``) or are generated once and kept in
``OUT/credentials/`` so re-running after adding a device does not change anyone else's password.
With ``--db`` (the collector's store), devices that enrolled through ``/api/v1/enrol`` keep the
password they were given there: the store holds only its ``$7$`` hash, which goes into ``passwd``
as it is; and every other device's generated password gets an argon2 hash in the store
(``record_device_logins``), so its ``credentials/`` file logs in to the collector too, not only
to the broker.  Passwords are never printed or logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from agent.config import ConfigTree, did_you_mean
from agent.errors import UserError
from agent.files import atomic_write
from agent.protocol import MAX_PAYLOAD, REPLY, WATCH, ProtocolError, parse_broker_url

DEFAULT_SERVER_USER = "classroom-server"
DEVICE_WRITES = ("status", "alert", "event", "heartbeat")
# Broker-wide settings every generated (and shipped) config carries: they apply to every
# client, device or staff, whatever the listener.
HARDENING = (
    # The client id is the username: one account cannot take over another's session.  (A
    # stolen Pi's login connecting as "5b-pi-02" would otherwise knock that device off, and
    # looping it keeps a room's button offline.)  So every connection needs its own account:
    # each extra ingest worker of the collector gets one (``--ingest-workers``).
    "use_username_as_clientid true",
    # Nothing legitimate is bigger than the contract's payload limit (agent/protocol.py);
    # a larger publish is refused (QoS flow completed, not delivered) ...
    f"message_size_limit {MAX_PAYLOAD}",
    # ... and a packet far larger gets its sender disconnected before it is read into memory.
    f"max_packet_size {2 * MAX_PAYLOAD}",
)

# Messages queued per client (QoS 1 only: heartbeats are QoS 0 and never queued).  For a
# school's bridge this is what is kept while the trust's link is down: 400 devices at a
# generous 20 events an hour each is 8,000 an hour, so 100,000 is over a school day and a
# half (docs/broker.md, "Bridging a trust's schools").  The byte cap keeps a Pi's memory
# safe from a queue of large events (64 KiB each at most), whichever limit comes first.
MAX_QUEUED = 100_000
MAX_QUEUED_BYTES = 256 * 1024 * 1024

# What a school's bridge carries, relative to ``{prefix}/{site}/``.  Out to the trust's
# central broker: everything devices and staff write in the school (device status, alerts,
# events, heartbeats, staff answers and presence), so the central collector sees what a
# school's own collector would.  In from the central broker: only the collector's
# commands to this school's devices.  Each is a separate pattern, never ``#`` or ``both``,
# so a command that came in is never sent back out.  Nothing outside ``{prefix}/{site}/``
# is ever bridged: every pattern is under the school's own prefix on both sides.
BRIDGE_OUT = ("+/+/status", "+/+/alert", "+/+/event", "+/+/heartbeat", f"+/+/{REPLY}/+", f"+/{WATCH}/+")
BRIDGE_IN = ("+/+/cmd",)
BRIDGE_QOS = 1

# mosquitto 2.x's own parameters for "$7$" hashes (see mosquitto_passwd.c): 101 rounds, 12-byte salt.
PBKDF2_ROUNDS = 101
SALT_BYTES = 12


@dataclass
class Account:
    """One broker user and what it may do; ``rules`` are (access, topic filter) pairs."""

    username: str
    roles: list[str] = field(default_factory=list)
    rules: list[tuple[str, str]] = field(default_factory=list)

    def allow(self, access: str, topic_filter: str) -> None:
        if (access, topic_filter) not in self.rules:
            self.rules.append((access, topic_filter))


def device_rules(prefix: str, site: str, room: str, device: str) -> list[tuple[str, str]]:
    """A device writes only under its own {device} level and reads only its own cmd and replies."""
    base = f"{prefix}/{site}/{room}/{device}"
    return [("write", f"{base}/{kind}") for kind in DEVICE_WRITES] + [("read", f"{base}/cmd"),
                                                                       ("read", f"{base}/{REPLY}/+")]


def teacher_rules(prefix: str, site: str, room: str, username: str) -> list[tuple[str, str]]:
    """A teacher of *room*: reads its alerts and device status, answers (ack/clear) only in
    their own name, says they are watching it; never writes ``cmd`` (the collector's alone)."""
    base = f"{prefix}/{site}/{room}"
    return [("read", f"{base}/+/alert"), ("read", f"{base}/+/status"),
            ("write", f"{base}/+/{REPLY}/{username}"), ("write", f"{base}/{WATCH}/{username}")]


def contact_rules(prefix: str, site: str, username: str) -> list[tuple[str, str]]:
    """An escalation contact (DSL, office) answers reports from any room, in their own name."""
    base = f"{prefix}/{site}/+"
    return [("read", f"{base}/+/alert"), ("read", f"{base}/+/status"), ("write", f"{base}/+/{REPLY}/{username}")]


def worker_users(server_user: str, ingest_workers: int) -> list[str]:
    """The collector's broker accounts: one per MQTT connection, as the client id is the
    username.  ``serve --ingest-workers N`` connects its extra workers as ``USER-1`` ..
    ``USER-(N-1)``, with the same password."""
    return [server_user] + [f"{server_user}-{i}" for i in range(1, max(1, ingest_workers))]


def build_accounts(tree: ConfigTree, server_user: str = DEFAULT_SERVER_USER,
                   ingest_workers: int = 1, timetabled: dict[str, list[str]] | None = None) -> dict[str, Account]:
    """Every broker account the config tree implies, with its ACL rules; *timetabled*
    (``{staff: [rooms]}``, from the store's timetable and cover) adds teacher rules."""
    site = tree.site.site
    prefix = tree.site.broker.prefix
    accounts: dict[str, Account] = {}

    def account(name: str, role: str) -> Account:
        acc = accounts.setdefault(name, Account(name))
        if role not in acc.roles:
            acc.roles.append(role)
        return acc

    # Devices first, so a staff username that collides with a device id is caught below.
    for room in tree.rooms.values():
        for device in room.devices:
            acc = account(device.id, "device")
            for rule in device_rules(prefix, site, room.room, device.id):
                acc.allow(*rule)
    devices = set(accounts)

    def staff(name: str, role: str) -> Account:
        if name in devices or name == server_user:
            raise UserError(f"staff username {name!r} is also a device id or the server user; "
                            "broker usernames must be unique")
        return account(name, role)

    for room in tree.rooms.values():
        for name in room.alert_staff:
            acc = staff(name, "teacher")
            for rule in teacher_rules(prefix, site, room.room, name):
                acc.allow(*rule)
    for name, rooms in sorted((timetabled or {}).items()):
        for room in rooms:
            if room not in tree.rooms:
                continue  # a room the timetable knew and the config no longer has
            acc = staff(name, "teacher")
            for rule in teacher_rules(prefix, site, room, name):
                acc.allow(*rule)
    for contact in tree.site.escalation.contacts:
        if contact.staff:
            acc = staff(contact.staff, f"escalation:{contact.role}")
            # Escalation contacts answer reports from any room, so they may also ack/clear anywhere.
            for rule in contact_rules(prefix, site, contact.staff):
                acc.allow(*rule)
    for name in worker_users(server_user, ingest_workers):
        if name in accounts:
            raise UserError(f"server user {name!r} is also a device id or a member of staff; "
                            "choose another --server-user")
        srv = account(name, "server")
        # "$share/<group>/classroom/v1/#" is checked by mosquitto against the topic after the
        # $share/<group>/ part, so this one rule also covers the collector's shared subscription.
        srv.allow("read", f"{prefix}/#")
        srv.allow("write", f"{prefix}/+/+/+/cmd")
    return accounts


def render_acl(accounts: dict[str, Account], header: str = "") -> str:
    lines = [
        "# mosquitto ACL written by `classroom-server broker-config`; re-run it, do not edit by hand.",
        *(f"# {h}" for h in header.splitlines() if h),
        "# No rules before the first `user` line: anonymous clients get nothing (and are refused anyway).",
        "",
    ]
    for acc in accounts.values():
        lines.append(f"# {', '.join(acc.roles)}")
        lines.append(f"user {acc.username}")
        lines.extend(f"topic {access} {topic_filter}" for access, topic_filter in acc.rules)
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- passwords


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The ``$7$`` PBKDF2-SHA512 hash mosquitto 2 writes and checks."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ROUNDS)
    return f"$7${PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, passwords: dict[str, str], *, tool: str | None = "auto",
                        hashed: dict[str, str] | None = None) -> str:
    """Write a hashed mosquitto password file (0600); return how it was hashed.

    *hashed* entries are already ``$7$`` hashes (enrolled devices) and are copied as they are."""
    if tool == "auto":
        tool = shutil.which("mosquitto_passwd")
    path.parent.mkdir(parents=True, exist_ok=True)
    if tool:
        # Plain text in a 0600 scratch file, hashed in place by -U: the passwords never
        # appear on a command line (visible in `ps`).
        fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".passwd-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.writelines(f"{user}:{pw}\n" for user, pw in passwords.items())
            result = subprocess.run([tool, "-U", scratch], capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise UserError(f"mosquitto_passwd -U failed: {(result.stderr or result.stdout).strip()}")
            text = Path(scratch).read_text()
        finally:
            Path(scratch).unlink(missing_ok=True)
    else:
        text = "".join(f"{user}:{hash_password(pw)}\n" for user, pw in passwords.items())
    # Already-hashed entries go after -U, which would otherwise hash the hashes again.
    text += "".join(f"{user}:{h}\n" for user, h in (hashed or {}).items())
    atomic_write(path, text, 0o600)
    return "mosquitto_passwd" if tool else "builtin"


def load_users(path: str | Path) -> dict[str, str]:
    """Read a users file: YAML mapping ``username: password``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read users file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or 'syntax error'})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of username: password, not {type(data).__name__}")
    users: dict[str, str] = {}
    for name, password in data.items():
        if not isinstance(name, str):
            raise UserError(f"{path}: {name!r}: usernames must be strings")
        if not isinstance(password, str) or not password:
            # Never echo the value: it may be a real password with a typo.
            raise UserError(f"{path}: {name}: password must be a non-empty string")
        if any(c in password for c in "\r\n\0"):
            raise UserError(f"{path}: {name}: password may not contain line breaks")
        if ":" in name or any(c.isspace() for c in name):
            raise UserError(f"{path}: {name!r}: usernames may not contain ':' or spaces")
        users[name] = password
    return users


def _open_db(db_url: str):
    """The collector's store for ``--db``, or a one-line UserError (never an empty new database)."""
    from .store import Store, StoreError

    if db_url.startswith("sqlite:///"):
        # Same path rule as server/store/engine.py; never create an empty database by mistake.
        db_path = db_url[len("sqlite:///"):]
        if db_url.startswith("sqlite:////") and not db_path.startswith("/"):
            db_path = "/" + db_path
        if not Path(db_path).exists():
            raise UserError(f"--db: {db_path}: no such database (give the collector's --db)")
    try:
        return Store.open(db_url)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a DSN may carry a password: do not echo it
        raise UserError(f"--db: cannot open the collector's store ({type(exc).__name__})") from None


def enrolled_hashes(db_url: str) -> dict[str, str]:
    """{device: $7$ hash} for devices that enrolled with the collector (server/devices.py)."""
    store = _open_db(db_url)
    try:
        hashes = store.mqtt_hashes()
    finally:
        store.close()
    return {device: h for device, h in hashes.items() if str(h).startswith("$7$")}


def timetabled_staff(db_url: str, tree: ConfigTree) -> dict[str, list[str]]:
    """{staff: [rooms]} the collector's timetable and cover (from today, school time) name."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    today = datetime.now(timezone.utc).astimezone(ZoneInfo(tree.site.timezone)).date().isoformat()
    store = _open_db(db_url)
    try:
        return store.timetabled_rooms(tree.site.site, today)
    finally:
        store.close()


def read_credentials(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(data, dict) and isinstance(data.get("password"), str) and data["password"]:
        return data
    return None


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (created 0600, never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, 0o600)


# --------------------------------------------------------------------------- mosquitto.conf


@dataclass
class ListenerOptions:
    port: int | None = None
    bind: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    persistence_dir: str | None = None
    run_as: str | None = None
    log_file: str | None = None


def render_conf(tree: ConfigTree, out: Path, opts: ListenerOptions,
                bridge: "BridgeOptions | None" = None) -> tuple[str, list[str]]:
    """mosquitto.conf text plus warnings for the technician; with *bridge*, the school's
    bridge to the trust's central broker goes at the end."""
    warnings: list[str] = []
    url = urlsplit(tree.site.broker.url)
    if url.scheme == "mqtts" and not opts.certfile:
        warnings.append(f"site broker url {tree.site.broker.url} is mqtts:// but no --certfile/--keyfile "
                        "was given; writing a plain-text listener")
    lines = listener_lines(out, opts, [f"site {tree.site.site}, config version {tree.version}"], url.port)
    if bridge is not None:
        bridge_text, bridge_warnings = render_bridge(tree, bridge)
        lines.append(bridge_text)
        warnings += bridge_warnings
    return "\n".join(lines) + "\n", warnings


def listener_lines(out: Path, opts: ListenerOptions, header: list[str], url_port: int | None = None) -> list[str]:
    """The broker-wide part of every generated mosquitto.conf, school or central: the
    listener, accounts, persistence and HARDENING."""
    tls = bool(opts.certfile)
    if bool(opts.certfile) != bool(opts.keyfile):
        raise UserError("--certfile and --keyfile go together")
    port = opts.port or url_port or (8883 if tls else 1883)
    lines = [
        "# mosquitto.conf written by `classroom-server broker-config`; re-run it, do not edit by hand.",
        *(f"# {h}" for h in header),
        "per_listener_settings false",
        f"listener {port}" + (f" {opts.bind}" if opts.bind else ""),
    ]
    if tls:
        lines += [f"certfile {Path(opts.certfile).resolve()}", f"keyfile {Path(opts.keyfile).resolve()}",
                  "tls_version tlsv1.2"]
        if opts.cafile:
            lines.append(f"cafile {Path(opts.cafile).resolve()}")
    lines += [
        "allow_anonymous false",
        f"password_file {(out / 'passwd').resolve()}",
        f"acl_file {(out / 'acl').resolve()}",
        "persistence true",
        f"persistence_location {Path(opts.persistence_dir or out / 'data').resolve()}/",
        "autosave_interval 60",
        # A school is hundreds of devices; a trust thousands. The OS limit applies, not ours.
        "max_connections -1",
        # Alerts are tiny; Nagle's delay would dominate the press -> teacher latency.
        "set_tcp_nodelay true",
        # Per client: the ingest backlog during a collector restart (docs/server.md), and a
        # school's bridge backlog while the trust's link is down (MAX_QUEUED).
        f"max_queued_messages {MAX_QUEUED}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        *HARDENING,
    ]
    if opts.run_as:
        lines.append(f"user {opts.run_as}")
    if opts.log_file:
        lines += [f"log_dest file {Path(opts.log_file).resolve()}", "log_timestamp true",
                  "connection_messages true"]
    return lines


# --------------------------------------------------------------------------- bridging (a trust)


def bridge_user(site: str) -> str:
    """The central broker's account for *site*'s bridge (one per school)."""
    return f"bridge-{site}"


@dataclass
class BridgeOptions:
    """A school broker's link to the trust's central broker (``--bridge-to`` and friends)."""

    url: str
    username: str
    password: str
    cafile: str | None = None


def load_bridge_credentials(path: str | Path, site: str) -> tuple[str, str]:
    """(username, password) from the central broker's ``credentials/bridge-SITE.yaml``, which
    must be this school's: another school's file would put this school's traffic under
    that school's name (and the central ACL would drop it)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"--bridge-credentials: {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise UserError(f"--bridge-credentials: {path}: not valid YAML") from None
    creds = read_credentials(path) if isinstance(data, dict) else None
    if creds is None or not isinstance(creds.get("username"), str):
        raise UserError(f"--bridge-credentials: {path}: needs username and password (the central broker's "
                        f"credentials/{bridge_user(site)}.yaml)")
    if creds["username"] != bridge_user(site):
        raise UserError(f"--bridge-credentials: {path}: username {creds['username']!r} is not this school's bridge "
                        f"account {bridge_user(site)!r}")
    if any(c in creds["password"] for c in "\r\n\0") or creds["password"] != creds["password"].strip():
        raise UserError(f"--bridge-credentials: {path}: password may not contain line breaks or edge spaces")
    return creds["username"], creds["password"]


def render_bridge(tree: ConfigTree, bridge: BridgeOptions) -> tuple[str, list[str]]:
    """The ``connection`` section of a school's mosquitto.conf: its bridge to the central
    broker, carrying only ``{prefix}/{site}/...`` (BRIDGE_OUT out, BRIDGE_IN in)."""
    try:
        host, port, tls = parse_broker_url(bridge.url, "--bridge-to")
    except ProtocolError as exc:
        raise UserError(str(exc)) from None
    site, prefix = tree.site.site, tree.site.broker.prefix
    warnings = []
    lines = [
        "",
        f"# Bridge to the trust's central broker (docs/broker.md, \"Bridging a trust's schools\"): "
        f"only {prefix}/{site}/...",
        f"connection {bridge.username}",
        f"address {host}:{port}",
        # MQTT 3.1.1 with mosquitto's bridge flag (try_private): the central broker does not
        # echo back what the bridge itself sent.
        "bridge_protocol_version mqttv311",
        "try_private true",
        # The central broker ties a session to its username (use_username_as_clientid).
        f"remote_clientid {bridge.username}",
        f"remote_username {bridge.username}",
        f"remote_password {bridge.password}",
        f"local_clientid {bridge.username}.local",
        # The queue while the link is down: persistent sessions on both sides, so this broker
        # keeps what is to go out (up to max_queued_messages, saved with its persistence) and
        # the central broker keeps this school's commands; subscriptions are kept, not undone.
        "cleansession false",
        "local_cleansession false",
        "bridge_attempt_unsubscribe false",
        "start_type automatic",
        "restart_timeout 2 30",
        "keepalive_interval 30",
        # A bridge's $SYS notifications would go to the central broker outside this school's
        # topics, where its ACL drops them anyway.
        "notifications false",
    ]
    if tls:
        lines.append(f"bridge_cafile {Path(bridge.cafile).resolve()}" if bridge.cafile
                     else "bridge_capath /etc/ssl/certs")
        lines += ["bridge_tls_version tlsv1.2", "bridge_insecure false"]
    else:
        warnings.append(f"--bridge-to {bridge.url} is plain mqtt://: the school's events cross the trust's network "
                        "unencrypted; use mqtts:// outside a closed test network")
    base = f"{prefix}/{site}/"
    lines += [f"topic {pattern} out {BRIDGE_QOS} {base} {base}" for pattern in BRIDGE_OUT]
    lines += [f"topic {pattern} in {BRIDGE_QOS} {base} {base}" for pattern in BRIDGE_IN]
    return "\n".join(lines), warnings


def build_central_accounts(trees: list[ConfigTree], server_user: str = DEFAULT_SERVER_USER,
                           ingest_workers: int = 1, devices: set[str] | frozenset[str] = frozenset()
                           ) -> dict[str, Account]:
    """The trust's central broker: one bridge account per school (read and write only under
    its own ``{prefix}/{site}/#``), the collector's ingest workers (every school's topics),
    and each school's staff with the same rules as on their school's broker, for trust
    staff and escalation contacts who connect to the central broker.  Devices log in to
    their school's broker; only those named in *devices* (ones whose password the central
    broker can know: enrolled with the collector, or given in ``--users``) also get an
    account here, with the same rules as at school, for when they are off-site and report
    to the central broker (site.yaml ``offsite.broker_url``)."""
    sites = [tree.site.site for tree in trees]
    for site in sites:
        if sites.count(site) > 1:
            raise UserError(f"--config: site {site!r} is given twice; one config tree per school")
    accounts: dict[str, Account] = {}
    bridges = {bridge_user(site) for site in sites}
    for tree in trees:
        for name, acc in build_accounts(tree, server_user, ingest_workers).items():
            if "device" in acc.roles and name not in devices:
                continue
            if name in bridges:
                raise UserError(f"{tree.site.site}: staff username {name!r} is a school bridge account's name")
            merged = accounts.setdefault(name, Account(name))
            for role in acc.roles:
                if role not in merged.roles:
                    merged.roles.append(role)
            for rule in acc.rules:
                merged.allow(*rule)
    for tree in trees:
        acc = accounts.setdefault(bridge_user(tree.site.site), Account(bridge_user(tree.site.site), ["bridge"]))
        acc.allow("readwrite", f"{tree.site.broker.prefix}/{tree.site.site}/#")
    return accounts


def generate_central(trees: list[ConfigTree], out: str | Path, *, users: dict[str, str] | None = None,
                     users_path: str = "users file", server_user: str = DEFAULT_SERVER_USER,
                     opts: ListenerOptions | None = None, passwd_tool: str | None = "auto",
                     ingest_workers: int = 1, enrolled: dict[str, str] | None = None) -> Result:
    """``broker-config --central``: the trust's central broker files in *out*.  Devices get
    an account only with a password the central broker can know: their enrolment hash in
    *enrolled* (``--db``, the trust's collector) or their password in *users*."""
    out = Path(out)
    opts = opts or ListenerOptions()
    in_trees = {d.id for tree in trees for room in tree.rooms.values() for d in room.devices}
    devices = in_trees & (set(enrolled or {}) | set(users or {}))
    accounts = build_central_accounts(trees, server_user, ingest_workers, devices)
    header = [f"central broker of the trust: sites {', '.join(t.site.site for t in trees)}"]
    conf = "\n".join(listener_lines(out, opts, header)) + "\n"
    enrolled = {d: h for d, h in (enrolled or {}).items() if d in devices and d not in (users or {})}
    generated, hashed, hashed_by = write_accounts(out, accounts, users or {}, users_path, server_user,
                                                  ingest_workers, passwd_tool, header[0], enrolled)
    Path(opts.persistence_dir or out / "data").mkdir(parents=True, exist_ok=True)
    atomic_write(out / "mosquitto.conf", conf, 0o644)
    warnings = [] if opts.certfile else ["no --certfile/--keyfile: the central broker listens in plain text; "
                                         "schools' bridges need mqtts:// outside a closed test network"]
    return Result(accounts, generated, hashed, hashed_by, warnings)


# --------------------------------------------------------------------------- the command


@dataclass
class Result:
    accounts: dict[str, Account]
    generated: list[str]
    enrolled: list[str]
    hashed_by: str
    warnings: list[str]


def generate(tree: ConfigTree, out: str | Path, *, users: dict[str, str] | None = None,
             users_path: str = "users file", server_user: str = DEFAULT_SERVER_USER,
             opts: ListenerOptions | None = None, passwd_tool: str | None = "auto",
             enrolled: dict[str, str] | None = None, ingest_workers: int = 1,
             timetabled: dict[str, list[str]] | None = None, bridge: BridgeOptions | None = None) -> Result:
    out = Path(out)
    opts = opts or ListenerOptions()
    accounts = build_accounts(tree, server_user, ingest_workers, timetabled)
    # The conf first: a bad flag stops the command before any file is written.
    conf, warnings = render_conf(tree, out, opts, bridge)
    header = f"site {tree.site.site}, config version {tree.version}"
    generated, hashed, hashed_by = write_accounts(out, accounts, users or {}, users_path, server_user,
                                                  ingest_workers, passwd_tool, header, enrolled)
    Path(opts.persistence_dir or out / "data").mkdir(parents=True, exist_ok=True)
    # With a bridge, the conf holds the bridge's password (mosquitto has no other place for
    # it), so it is as private as passwd.
    atomic_write(out / "mosquitto.conf", conf, 0o600 if bridge else 0o644)
    return Result(accounts, generated, hashed, hashed_by, warnings)


def write_accounts(out: Path, accounts: dict[str, Account], users: dict[str, str], users_path: str,
                   server_user: str, ingest_workers: int, passwd_tool: str | None, header: str,
                   enrolled: dict[str, str] | None = None) -> tuple[list[str], list[str], str]:
    """Passwords (from *users*, kept in ``credentials/``, enrolled hashes, or new), the
    ``credentials/`` files, ``passwd`` and ``acl``; returns (generated, enrolled, hashed_by)."""
    workers = worker_users(server_user, ingest_workers)[1:]
    for name in users:
        if name not in accounts:
            raise UserError(f"{users_path}: {name!r} is not a device, a staff member in alert_staff, escalation "
                            f"contacts or the timetable, a school bridge, or the server user"
                            f"{did_you_mean(name, list(accounts))}")
    out.mkdir(parents=True, exist_ok=True)
    cred_dir = out / "credentials"
    cred_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(cred_dir, 0o700)
    passwords: dict[str, str] = {}
    hashed: dict[str, str] = {}
    generated: list[str] = []
    for name, acc in accounts.items():
        if name in workers:
            continue  # the server's own password, below
        if name in users:
            passwords[name] = users[name]
            continue
        if enrolled and name in enrolled and "device" in acc.roles:
            hashed[name] = enrolled[name]
            # The device has its enrolment password now; an old generated file would mislead.
            (cred_dir / f"{name}.yaml").unlink(missing_ok=True)
            continue
        kept = read_credentials(cred_dir / f"{name}.yaml")
        if kept is not None:
            passwords[name] = kept["password"]
        else:
            passwords[name] = secrets.token_urlsafe(18)
            generated.append(name)
    for name in workers:
        passwords[name] = passwords[server_user]
        (cred_dir / f"{name}.yaml").unlink(missing_ok=True)  # serve reads the server's file
    for name, acc in accounts.items():
        if name in hashed or name in workers:
            continue
        write_private(cred_dir / f"{name}.yaml",
                      f"# broker credentials for {name} ({', '.join(acc.roles)}); keep this file 0600\n"
                      + yaml.safe_dump({"username": name, "password": passwords[name]}, sort_keys=False))
    hashed_by = write_password_file(out / "passwd", passwords, tool=passwd_tool, hashed=hashed)
    write_private(out / "acl", render_acl(accounts, header=header))
    return generated, sorted(hashed), hashed_by


def add_parser(sub) -> None:
    """Register ``broker-config`` on classroom-server's subcommands."""
    p = sub.add_parser("broker-config", help="write mosquitto.conf, password file and ACL from the config tree")
    p.add_argument("--config", required=True, metavar="DIR", action="append",
                   help="the config tree (site.yaml, rooms/...); with --central, once per school of the trust")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write mosquitto.conf, passwd, acl")
    p.add_argument("--users", metavar="FILE", help="YAML username: password; others are generated")
    p.add_argument("--db", metavar="URL", help="the collector's store (as serve --db): enrolled devices keep "
                   "their enrolment password, and timetabled staff may read their rooms; with "
                   "--central, enrolled devices get an account there too (for off-site)")
    p.add_argument("--server-user", default=DEFAULT_SERVER_USER, help="broker username of classroom-server")
    p.add_argument("--ingest-workers", type=int, default=1, metavar="N",
                   help="as `serve --ingest-workers N`: accounts USER-1..USER-(N-1) for the extra workers")
    p.add_argument("--port", type=int, help="listener port (default: from site broker url)")
    p.add_argument("--bind", metavar="ADDRESS", help="listen address (default: all)")
    p.add_argument("--certfile", help="TLS certificate (PEM)")
    p.add_argument("--keyfile", help="TLS private key (PEM)")
    p.add_argument("--cafile", help="CA bundle for client certificates, if used")
    p.add_argument("--persistence-dir", metavar="DIR", help="mosquitto persistence (default OUT/data)")
    p.add_argument("--run-as", metavar="USER", help="user mosquitto runs as (must be able to read OUT)")
    p.add_argument("--log-file", metavar="FILE", help="mosquitto log file (default: mosquitto's own)")
    trust = p.add_argument_group("a trust of schools (docs/broker.md, \"Bridging a trust's schools\")")
    trust.add_argument("--central", action="store_true",
                       help="write the trust's central broker: a bridge account per school (--config each), "
                            "the collector's and the staff's accounts")
    trust.add_argument("--bridge-to", metavar="URL",
                       help="this school's broker bridges its own topics to the central broker at URL "
                            "(mqtts://HOST:PORT)")
    trust.add_argument("--bridge-credentials", metavar="FILE",
                       help="the central broker's credentials/bridge-SITE.yaml for this school")
    trust.add_argument("--bridge-ca-file", metavar="FILE",
                       help="CA certificate that signed the central broker's (default: the system's CAs)")
    p.set_defaults(func=cmd_broker_config)


def cmd_broker_config(args) -> int:
    import sys

    from agent.config import ConfigInvalid, load_tree
    from agent.errors import print_problems

    check_trust_flags(args)
    trees = []
    for config in args.config:
        try:
            trees.append(load_tree(config))
        except ConfigInvalid as exc:
            return print_problems("classroom-server", exc.errors, config, "no broker files were written")
    tree = trees[0]
    users = load_users(args.users) if args.users else {}
    opts = ListenerOptions(port=args.port, bind=args.bind, certfile=args.certfile, keyfile=args.keyfile,
                           cafile=args.cafile, persistence_dir=args.persistence_dir, run_as=args.run_as,
                           log_file=args.log_file)
    if not 1 <= args.ingest_workers <= 64:
        raise UserError(f"--ingest-workers: {args.ingest_workers} is not between 1 and 64")
    if args.central:
        result = generate_central(trees, args.out, users=users, users_path=args.users or "users file",
                                  server_user=args.server_user, opts=opts, ingest_workers=args.ingest_workers,
                                  enrolled=enrolled_hashes(args.db) if args.db else None)
        for warning in result.warnings:
            print(f"classroom-server: warning: {warning}", file=sys.stderr)
        out = Path(args.out)
        bridges = [name for name, acc in result.accounts.items() if "bridge" in acc.roles]
        devices = [name for name, acc in result.accounts.items() if "device" in acc.roles]
        servers = [name for name, acc in result.accounts.items() if "server" in acc.roles]
        staff = len(result.accounts) - len(bridges) - len(devices) - len(servers)
        print(f"{out}: wrote the central broker's mosquitto.conf, passwd ({result.hashed_by}), acl for "
              f"{len(bridges)} school bridge(s), the collector, {staff} staff and {len(devices)} device(s) "
              "that may report here from off-site")
        for name in bridges:
            print(f"copy {out / 'credentials' / (name + '.yaml')} to that school for its --bridge-credentials")
        return 0
    bridge = None
    if args.bridge_to:
        username, password = load_bridge_credentials(args.bridge_credentials, tree.site.site)
        bridge = BridgeOptions(args.bridge_to, username, password, args.bridge_ca_file)
    enrolled = enrolled_hashes(args.db) if args.db else None
    timetabled = timetabled_staff(args.db, tree) if args.db else None
    result = generate(tree, args.out, users=users, users_path=args.users or "users file",
                      server_user=args.server_user, opts=opts, enrolled=enrolled,
                      ingest_workers=args.ingest_workers, timetabled=timetabled, bridge=bridge)
    for warning in result.warnings:
        print(f"classroom-server: warning: {warning}", file=sys.stderr)
    roles: dict[str, int] = {}
    for acc in result.accounts.values():
        key = "staff" if acc.roles[0] in ("teacher",) or acc.roles[0].startswith("escalation") else acc.roles[0]
        roles[key] = roles.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in roles.items())
    out = Path(args.out)
    print(f"{out}: wrote mosquitto.conf, passwd ({result.hashed_by}), acl for {summary}")
    if bridge is not None:
        print(f"{out / 'mosquitto.conf'}: bridges {tree.site.broker.prefix}/{tree.site.site}/... to "
              f"{args.bridge_to} as {bridge.username}; it holds the bridge's password (0600): chown it to "
              "the user mosquitto runs as, like passwd and acl")
    if result.enrolled:
        print(f"{len(result.enrolled)} enrolled device(s) keep their enrolment password: {', '.join(result.enrolled)}")
    if args.db:
        recorded = record_device_logins(args.db, out, result.accounts, tree)
        if recorded:
            print(f"{len(recorded)} device(s) can now also log in to the collector with their credentials/ file: "
                  f"{', '.join(recorded)}")
    if result.generated:
        print(f"{out / 'credentials'}: generated new passwords for {len(result.generated)} account(s): "
              f"{', '.join(result.generated)} (files are 0600; copy each device's file to its "
              "/etc/classroom-safety/credentials.yaml)")
    return 0


def check_trust_flags(args) -> None:
    """The --central / --bridge-* combinations, each wrong one a one-line error."""
    if args.central:
        for flag, value in (("--bridge-to", args.bridge_to), ("--bridge-credentials", args.bridge_credentials),
                            ("--bridge-ca-file", args.bridge_ca_file)):
            if value:
                raise UserError(f"{flag}: not used with --central (it belongs to a school's broker-config)")
        return
    if len(args.config) > 1:
        raise UserError("--config: give one school's config tree (several only with --central)")
    if args.bridge_to:
        try:
            parse_broker_url(args.bridge_to, "--bridge-to")
        except ProtocolError as exc:
            raise UserError(str(exc)) from None
        if not args.bridge_credentials:
            raise UserError("--bridge-to needs --bridge-credentials (the central broker's "
                            "credentials/bridge-SITE.yaml for this school)")
    else:
        for flag, value in (("--bridge-credentials", args.bridge_credentials),
                            ("--bridge-ca-file", args.bridge_ca_file)):
            if value:
                raise UserError(f"{flag}: only with --bridge-to URL")
    if args.bridge_ca_file and not Path(args.bridge_ca_file).is_file():
        raise UserError(f"--bridge-ca-file: {args.bridge_ca_file}: no such file")


def record_device_logins(db_url: str, out: Path, accounts: dict[str, Account], tree: ConfigTree) -> list[str]:
    """With ``--db``: store an argon2 hash of each device password kept in ``OUT/credentials/``
    in the collector's registry, so a device given that file logs in to the collector
    (config fetch, device API) as well as to the broker.  Devices that enrolled with a token
    have no file there and are left alone; a hash that already matches is not redone.
    Returns the devices whose collector login was (re)recorded."""
    from .http.auth import hash_password, verify_device_secret
    from .store import Store

    rooms = {d.id: room.room for room in tree.rooms.values() for d in room.devices}
    store = Store.open(db_url)
    recorded = []
    try:
        for name, acc in accounts.items():
            if "device" not in acc.roles:
                continue
            kept = read_credentials(out / "credentials" / f"{name}.yaml")
            if kept is None:
                continue
            row = store.get_device(name) or {}
            if row.get("password_hash") and verify_device_secret(row["password_hash"], kept["password"]):
                continue
            store.set_device_credentials(name, hash_password(kept["password"]), by="broker-config",
                                         site=tree.site.site, room=rooms.get(name))
            store.audit("cli", "device.credentials", name, {"by": "broker-config"}, site=tree.site.site)
            recorded.append(name)
    finally:
        store.close()
    return recorded
