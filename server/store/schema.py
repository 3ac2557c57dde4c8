"""The collector's database schema: one idempotent SQL string, valid on SQLite and PostgreSQL.

datasette idiom: the whole schema is ``SCHEMA`` (every statement ``CREATE ... IF NOT
EXISTS``) and is run on every start; later changes go in ``MIGRATIONS`` (numbered,
each run once, recorded in ``schema_version``).  Only portable types are used:
TEXT (ids, JSON, RFC 3339 UTC timestamps, which sort correctly as text), INTEGER,
BIGINT, REAL.  Row ids are UUID text (no SERIAL/AUTOINCREMENT, which differ per
engine); ordering uses the microsecond timestamp then the id.

Every column is described for the DPIA in docs/data-protection.md; keep it in step.

``apply(tx)`` runs both (the store calls it on open); ``utcnow``/``iso``/``new_id`` make the
server-side timestamp and id values the columns above expect.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at TEXT NOT NULL
);

-- Every device event (blocked, report_evidence, login, lock, config_applied, ...).
-- id is the agent's UUID: the primary key is the de-duplication (DESIGN rule 5).
CREATE TABLE IF NOT EXISTS events (
    id TEXT NOT NULL PRIMARY KEY,
    type TEXT NOT NULL,
    ts TEXT NOT NULL,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    device TEXT NOT NULL,
    user_name TEXT,
    domain TEXT,
    profile TEXT,
    alert_id TEXT,
    data TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_type_ts ON events (type, ts);
CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts);
CREATE INDEX IF NOT EXISTS events_alert ON events (alert_id);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
-- A school's reports and purges (site, type, time range): on a year of millions of blocked
-- attempts, (type, ts) alone reads every school's rows of the range and checks each one's site.
CREATE INDEX IF NOT EXISTS events_site_type_ts ON events (site, type, ts);

-- A teacher's answer to a pupil's "Ask my teacher" (an unblock_request event, whose id
-- this is): allowed for the lesson, or dismissed.  The request itself is the event row.
CREATE TABLE IF NOT EXISTS unblock_answers (
    request_id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    answer TEXT NOT NULL,
    by_whom TEXT NOT NULL,
    answered_at TEXT NOT NULL
);

-- One row per alert transition; (alert_id, state) de-duplicates agent resends.
CREATE TABLE IF NOT EXISTS alert_transitions (
    alert_id TEXT NOT NULL,
    state TEXT NOT NULL,
    ts TEXT NOT NULL,
    by_whom TEXT,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    device TEXT NOT NULL,
    seat TEXT,
    received_at TEXT NOT NULL,
    PRIMARY KEY (alert_id, state)
);
CREATE INDEX IF NOT EXISTS alert_transitions_ts ON alert_transitions (ts);

-- One incident per alert (id = alert id), the DSL's record.
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    device TEXT NOT NULL,
    seat TEXT,
    raised_at TEXT NOT NULL,
    alert_state TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    category TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    outcome TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    closed_at TEXT
);
CREATE INDEX IF NOT EXISTS incidents_raised ON incidents (raised_at);
CREATE INDEX IF NOT EXISTS incidents_room ON incidents (room);

-- Staff actions on an incident: notes, category/status changes, checklist ticks.
CREATE TABLE IF NOT EXISTS incident_actions (
    id TEXT NOT NULL PRIMARY KEY,
    incident_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    item TEXT,
    text TEXT
);
CREATE INDEX IF NOT EXISTS incident_actions_incident ON incident_actions (incident_id, ts);

-- Device registry: enrolment credentials, retained status / Last Will, last heartbeat.
CREATE TABLE IF NOT EXISTS devices (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT,
    room TEXT,
    password_hash TEXT,
    mqtt_hash TEXT,
    enrolled_at TEXT,
    enrolled_by TEXT,
    status TEXT NOT NULL DEFAULT 'unknown',
    status_ts TEXT,
    agent_version TEXT,
    config_version TEXT,
    last_seen TEXT,
    last_heartbeat TEXT
);

CREATE TABLE IF NOT EXISTS heartbeats (
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    cpu REAL,
    mem REAL,
    temp REAL,
    uptime REAL,
    user_name TEXT,
    config_version TEXT,
    received_at TEXT NOT NULL,
    PRIMARY KEY (device, ts)
);
CREATE INDEX IF NOT EXISTS heartbeats_ts ON heartbeats (ts);

-- One-time enrolment tokens; only a SHA-256 of the token is stored.
CREATE TABLE IF NOT EXISTS enrol_tokens (
    token_hash TEXT NOT NULL PRIMARY KEY,
    device TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);

-- Alerts for technicians (dark devices), shown on the dashboard/API.
CREATE TABLE IF NOT EXISTS device_alerts (
    id TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    room TEXT,
    message TEXT NOT NULL,
    raised_at TEXT NOT NULL,
    cleared_at TEXT
);
CREATE INDEX IF NOT EXISTS device_alerts_device ON device_alerts (device, cleared_at);

CREATE TABLE IF NOT EXISTS users (
    username TEXT NOT NULL PRIMARY KEY,
    role TEXT NOT NULL,
    display_name TEXT,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);

-- Sessions: only a SHA-256 of the token is stored.
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT NOT NULL PRIMARY KEY,
    username TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS audit (
    id TEXT NOT NULL PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);

-- rollout and reports tables
-- Every distinct config tree ever published, content-addressed by ConfigTree.version.
-- tree = ConfigTree.to_dict() JSON (what devices are compiled from); files = {path: YAML text}
-- as the technician published it (for the audit diffs).
CREATE TABLE IF NOT EXISTS config_versions (
    version TEXT NOT NULL PRIMARY KEY,
    tree TEXT NOT NULL,
    files TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);

-- Each publish or rollback (who, when, why); the highest seq is the live version.
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT NOT NULL PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    version TEXT NOT NULL,
    previous TEXT,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    why TEXT NOT NULL,
    devices INTEGER NOT NULL
);

-- Escalations beyond the room (server/notify/): one row per (alert transition, channel,
-- recipient), so a restart or a second collector never sends the same one twice.
-- recipient is an e-mail address or a webhook's name, never its URL (which is a secret).
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT NOT NULL PRIMARY KEY,
    alert_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    device TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    claimed_until TEXT,
    sent_at TEXT,
    last_error TEXT,
    UNIQUE (alert_id, state, channel, recipient)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_alert ON deliveries (alert_id);
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries (created_at);

-- Every attempt at a delivery: when, the result, the error (secrets masked).
CREATE TABLE IF NOT EXISTS delivery_attempts (
    id TEXT NOT NULL PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    result TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS delivery_attempts_delivery ON delivery_attempts (delivery_id, ts);

-- Dashboard tabs showing a room's live view (server/presence.py): a room with a recent row
-- has a live receiver.  One row per (room, staff member), refreshed while the tab is open.
CREATE TABLE IF NOT EXISTS room_viewers (
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    username TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (site, room, username)
);

-- The DSL's record, issue 15: concerns.py, allowlist.py, exports.py, reviews.py, aup.py.  Every
-- row names its site, and every query takes it.
-- A concern a member of staff logged (policy 000 §7.3.2, 002 §6.1): the incident (id =
-- incidents.id) plus what they wrote; url/domain optional; tell_it puts the domain in
-- the technicians' queue.
CREATE TABLE IF NOT EXISTS concerns (
    incident_id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    device TEXT,
    logged_by TEXT NOT NULL,
    logged_at TEXT NOT NULL,
    happened_at TEXT NOT NULL,
    what TEXT NOT NULL,
    url TEXT,
    domain TEXT,
    tell_it INTEGER NOT NULL DEFAULT 0
);

-- The technicians' queue: domains staff asked IT to look at ("tell IT").
CREATE TABLE IF NOT EXISTS it_queue (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    domain TEXT,
    url TEXT,
    room TEXT,
    device TEXT,
    incident_id TEXT,
    asked_by TEXT NOT NULL,
    asked_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    done_by TEXT,
    done_at TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS it_queue_site ON it_queue (site, status, asked_at);

-- Allowlist changes the leadership approves (policy 000 §7.3.1): proposed by a technician,
-- decided by the DSL, published through the rollout.  A publish that changed an allow list
-- without a proposal is recorded here too (status published, approved_by NULL).
CREATE TABLE IF NOT EXISTS allowlist_changes (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    key_stages TEXT NOT NULL DEFAULT '[]',
    add_domains TEXT NOT NULL DEFAULT '[]',
    remove_domains TEXT NOT NULL DEFAULT '[]',
    files TEXT,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    proposed_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'proposed',
    decided_by TEXT,
    decided_at TEXT,
    decision_note TEXT,
    base_version TEXT,
    published_version TEXT,
    published_at TEXT
);
CREATE INDEX IF NOT EXISTS allowlist_changes_site ON allowlist_changes (site, proposed_at);

-- Every export of the record (CPOMS, MyConcern, Arbor): who, when, what, which format,
-- whether evidence domains were in it.
CREATE TABLE IF NOT EXISTS exports (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    format TEXT NOT NULL,
    with_evidence INTEGER NOT NULL DEFAULT 0,
    incidents TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS exports_site ON exports (site, ts);

-- The annual filtering and monitoring review (DfE standard): attendees by role, findings,
-- actions, the next review's date.
CREATE TABLE IF NOT EXISTS reviews (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    held_on TEXT NOT NULL,
    attendees TEXT NOT NULL,
    findings TEXT NOT NULL,
    actions TEXT NOT NULL,
    next_review TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_site ON reviews (site, held_on);

-- The check log's "actions taken" (one row per note on a filter_check event or a test run),
-- and the SWGfL test-filtering runs a technician started from a device and their results.
CREATE TABLE IF NOT EXISTS check_actions (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    check_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS check_actions_check ON check_actions (check_id, ts);
CREATE TABLE IF NOT EXISTS filter_tests (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    device TEXT NOT NULL,
    domain TEXT NOT NULL,
    started_by TEXT NOT NULL,
    started_at TEXT NOT NULL,
    result TEXT,
    details TEXT,
    recorded_by TEXT,
    recorded_at TEXT
);
CREATE INDEX IF NOT EXISTS filter_tests_site ON filter_tests (site, started_at);

-- Acceptable use, per pupil per term (from aup_accepted events, written in the ingest batch);
-- devices fetch this term's list so a pupil accepts once, not once per device.
CREATE TABLE IF NOT EXISTS aup_acceptances (
    site TEXT NOT NULL,
    user_name TEXT NOT NULL,
    term TEXT NOT NULL,
    accepted_at TEXT NOT NULL,
    room TEXT,
    device TEXT,
    key_stage TEXT,
    event_id TEXT NOT NULL,
    PRIMARY KEY (site, term, user_name)
);
-- High-risk notifications (server/notify/risk.py): one row per (site, device, risk list),
-- the start of its current 10-minute window.  Taking a window is one conditional upsert, so
-- two collectors on one PostgreSQL never both notify, and a restart does not reset it.
CREATE TABLE IF NOT EXISTS risk_windows (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    category TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    PRIMARY KEY (site, device, category)
);

-- The DSL's holds (server/holds.py): the incident's device locked until the DSL lifts it,
-- and its records from held_from (24 h before the press) kept out of retention meanwhile.
CREATE TABLE IF NOT EXISTS holds (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    room TEXT NOT NULL,
    device TEXT NOT NULL,
    held_from TEXT NOT NULL,
    placed_at TEXT NOT NULL,
    placed_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    lifted_at TEXT,
    lifted_by TEXT,
    lift_reason TEXT
);
CREATE INDEX IF NOT EXISTS holds_device ON holds (site, device, lifted_at);
CREATE INDEX IF NOT EXISTS holds_incident ON holds (incident_id);

-- A teacher's room commands (server/http/api/commands.py): one row per command and device,
-- and what the device answered (its cmd_result event, stored by ingest).  details: the
-- command's own fields as JSON (minutes, message, text, domain, reason).  result NULL: no
-- answer yet ("not reachable" on the room page once COMMAND_ANSWER_SECONDS have passed).
CREATE TABLE IF NOT EXISTS room_commands (
    id TEXT NOT NULL,
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    cmd TEXT NOT NULL,
    by_whom TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    details TEXT,
    result TEXT,
    error TEXT,
    answered_at TEXT,
    PRIMARY KEY (id, device)
);
CREATE INDEX IF NOT EXISTS room_commands_room ON room_commands (site, room, sent_at);

-- Each device's lock as its latest lock/unlock event says (ingest keeps it; the room page
-- shows it): locked 1/0, reason (staff, idle, out_of_hours ...), by, until (a timed lock).
CREATE TABLE IF NOT EXISTS device_locks (
    device TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    room TEXT NOT NULL,
    locked INTEGER NOT NULL,
    reason TEXT,
    by_whom TEXT,
    until TEXT,
    ts TEXT NOT NULL
);

-- The school's timetable (server/timetable.py), as last imported from the MIS export: who
-- teaches in which room when, so a press alerts the teacher in the room.  day: 0 = Monday;
-- times HH:MM in the school's zone.  Replaced whole by each import that passes validation.
CREATE TABLE IF NOT EXISTS timetable_lessons (
    site TEXT NOT NULL,
    day INTEGER NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT NOT NULL,
    room TEXT NOT NULL,
    staff TEXT NOT NULL,
    period TEXT,
    label TEXT
);
CREATE INDEX IF NOT EXISTS timetable_lessons_staff ON timetable_lessons (site, staff, day);
CREATE INDEX IF NOT EXISTS timetable_lessons_room ON timetable_lessons (site, room, day);

-- Each timetable import: who, when, from which file (name and SHA-256), how many lessons.
CREATE TABLE IF NOT EXISTS timetable_imports (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    ts TEXT NOT NULL,
    by_whom TEXT NOT NULL,
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    lessons INTEGER NOT NULL
);

-- Cover the office enters (/cover): on one date, from start to end (HH:MM, school zone),
-- staff teaches in room and gets its alerts like the timetabled teacher.
CREATE TABLE IF NOT EXISTS cover (
    id TEXT NOT NULL PRIMARY KEY,
    site TEXT NOT NULL,
    day TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT NOT NULL,
    room TEXT NOT NULL,
    staff TEXT NOT NULL,
    by_whom TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS cover_day ON cover (site, day);

-- Weekly digests already written, so a restart does not write/send one twice; one per
-- school (site) and week.
CREATE TABLE IF NOT EXISTS report_runs (
    site TEXT NOT NULL DEFAULT '',
    week TEXT NOT NULL,
    ts TEXT NOT NULL,
    path TEXT NOT NULL,
    emailed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (site, week)
);

-- tenancy: which schools (sites) a staff account belongs to, with its role in each.
-- site '*' is the trust level (role 'trust': totals and health of every school, no
-- pupils' records).  source: 'local' (an admin or the command line granted it) or
-- 'oidc' (replaced from the identity provider's group claim at every sign-in).
CREATE TABLE IF NOT EXISTS staff_sites (
    username TEXT NOT NULL,
    site TEXT NOT NULL,
    role TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'local',
    granted_at TEXT NOT NULL,
    PRIMARY KEY (username, site)
);
CREATE INDEX IF NOT EXISTS staff_sites_site ON staff_sites (site);

-- Single sign-on flows in progress (state, nonce, PKCE verifier), one row per browser
-- that went to the identity provider; used once, kept at most ten minutes.  state and
-- the browser's flow cookie are stored as SHA-256 only.
CREATE TABLE IF NOT EXISTS oidc_flows (
    state_hash TEXT NOT NULL PRIMARY KEY,
    browser_hash TEXT NOT NULL,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    next_path TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
"""

# (version, sql) pairs, applied in order once each; SCHEMA above is version 1.
# Statements must be portable; one statement per list entry.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, []),
    # Issue 15: the risk list a blocked attempt matched (agent/filter/risk.py), for the
    # blocked-attempt search, the weekly counts by category and the DSL's notifications.
    # A partial index: only the few tagged rows pay for it, so ingest keeps its pace (a
    # search by pupil walks the (type, ts) index over its date range instead of costing
    # every event an index entry).
    (2, ["ALTER TABLE events ADD COLUMN category TEXT",
         "CREATE INDEX IF NOT EXISTS events_category_received ON events (category, received_at) "
         "WHERE category IS NOT NULL"]),
    # 3: tenancy (one collector, several schools) and single sign-on.  Rows written before
    # it have no site; server/http/app.py gives them the one site of a single-school
    # install at start (``Store.adopt_single_site``), so nothing needs setting up.
    (3, [
        "ALTER TABLE users ADD COLUMN last_login_at TEXT",
        "ALTER TABLE users ADD COLUMN last_login_via TEXT",
        "ALTER TABLE users ADD COLUMN oidc_subject TEXT",
        "ALTER TABLE sessions ADD COLUMN site TEXT",
        "ALTER TABLE audit ADD COLUMN site TEXT",
        "CREATE INDEX IF NOT EXISTS audit_site_ts ON audit (site, ts)",
        "ALTER TABLE device_alerts ADD COLUMN site TEXT",
        "ALTER TABLE enrol_tokens ADD COLUMN site TEXT",
        "ALTER TABLE rollouts ADD COLUMN site TEXT",
        "CREATE INDEX IF NOT EXISTS rollouts_site_seq ON rollouts (site, seq)",
        "CREATE INDEX IF NOT EXISTS incidents_site_room ON incidents (site, room)",
        # report_runs was keyed by week alone: one digest per school and week now.
        "CREATE TABLE report_runs_v2 (site TEXT NOT NULL DEFAULT '', week TEXT NOT NULL, ts TEXT NOT NULL, "
        "path TEXT NOT NULL, emailed INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (site, week))",
        "INSERT INTO report_runs_v2 (week, ts, path, emailed) SELECT week, ts, path, emailed FROM report_runs",
        "DROP TABLE report_runs",
        "ALTER TABLE report_runs_v2 RENAME TO report_runs",
    ]),
]


def split_sql(script: str) -> list[str]:
    """Statements of a schema script: ``--`` comments dropped first (they may hold ';')."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def apply(tx) -> None:
    """Create what is missing and run each migration not yet recorded, in one transaction."""
    if tx.engine.dialect == "postgresql":
        # Several workers may start at once; CREATE ... IF NOT EXISTS is not safe
        # against itself, so migrations take a transaction-scoped advisory lock.
        tx.execute("SELECT pg_advisory_xact_lock(72430001)")
    for statement in split_sql(SCHEMA):
        tx.execute(statement)
    done = {r["version"] for r in tx.query("SELECT version FROM schema_version")}
    for version, migration in MIGRATIONS:
        if version in done:
            continue
        for statement in migration:
            tx.execute(statement)
        tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?) "
                   "ON CONFLICT (version) DO NOTHING", (version, utcnow()))


def str_or_none(value: Any) -> str | None:
    """A payload's optional text field as stored: the text, or NULL for anything else."""
    return value if isinstance(value, str) else None


def utcnow() -> str:
    """Server timestamps: RFC 3339 UTC with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso(moment: datetime) -> str:
    """*moment* in the same text form as utcnow()."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A row id (UUID text: no SERIAL/AUTOINCREMENT, which differ per engine)."""
    return str(uuid.uuid4())
