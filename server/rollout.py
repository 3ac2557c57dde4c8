"""Config rollout: publish a config tree, tell devices, serve their compiled config, roll back.

A technician publishes the whole ``config/`` tree (files as YAML text).  It is written to
a scratch folder and validated with ``agent.config.load_tree`` exactly as
``classroom-server config validate`` would: any problem rejects the publish with the
``file:line: key: message`` list, and nothing is stored or sent (DESIGN rule 7).

A valid tree is content-addressed by ``ConfigTree.version``; ``config_versions`` keeps
the tree JSON and the YAML files (for diffs) once per version, ``rollouts`` records each
publish or rollback (who, when, why, previous version), and the audit log gets the
unified diff against the version it replaced (DESIGN rule 6).  The newest rollout is the
live version.  Devices are then told with a ``reload-config`` cmd on their own cmd topic
(not retained: a device never acts on a retained command, and one that is off today fetches
anyway when it next connects, docs/protocol.md); they fetch
``GET /api/v1/devices/{id}/config`` (ETag = version, so an unchanged config costs a 304)
and report ``config_applied`` / ``config_rejected`` events, which ``status()`` reads back
together with the ``config_version`` of their status/heartbeats.

Rollback is one step: re-publish the version that was live before the current one, as a
new rollout record (history is never rewritten).

One config tree per school: a collector serving several schools (a trust) keeps a live
version per site (``site.yaml`` ``site:``).  Publishing, rolling back, the history, the
diffs and the per-room status all take the ``site`` the technician works in; a tree for
another site is refused, and so is one that reuses another school's device id
(server/sites.py).  A device fetches the compiled config of its own site's live tree.

The SQL is in server/store/rollouts.py; ``config publish`` / ``config rollback`` (the
technician's command line, through the API) are at the end of this module.
"""

from __future__ import annotations

import difflib
import json
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from agent import protocol
from agent.config import ConfigInvalid, ConfigTree, load_tree
from agent.config.yamlsrc import SourceError

from .store import new_id, utcnow

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 * 1024
MAX_FILES = 500
MAX_AUDIT_DIFF = 200_000


# publish(site=TREE_SITE): the site the published tree names (callers not acting for staff).
TREE_SITE = object()


class RolloutError(Exception):
    """A publish/rollback that cannot happen; ``errors`` are one line each."""

    def __init__(self, errors: list[str], status: int = 422):
        self.errors = [str(e) for e in errors]
        self.status = status
        super().__init__("\n".join(self.errors))


@dataclass
class Published:
    id: str
    seq: int
    version: str
    previous: str | None
    kind: str
    actor: str
    why: str
    devices: int
    ts: str
    notified: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# --------------------------------------------------------------------------- tree files


def _tree_file(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    if rel == "site.yaml":
        return True
    return (len(parts) == 2 and parts[0] in ("keystages", "rooms")
            and parts[1].endswith((".yaml", ".yml")) and not parts[1].startswith("."))


def read_files(root: str | Path) -> dict[str, str]:
    """The files load_tree reads from *root*, as {posix relative path: text}."""
    root = Path(root)
    if not root.is_dir():
        raise RolloutError([f"{root}: not a directory"])
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and _tree_file(rel):
            try:
                out[rel] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise RolloutError([f"{root.name}/{rel}: not UTF-8 text"]) from None
    return out


def check_files(files: Any, name: str = "config") -> tuple[ConfigTree, dict[str, str]]:
    """Validate a {path: YAML text} tree the way ``config validate`` does.

    Returns (tree, files) or raises RolloutError with file:line errors."""
    if not isinstance(files, dict) or not files:
        raise RolloutError(["files: expected an object mapping paths (site.yaml, rooms/5b.yaml...) to YAML text"])
    if len(files) > MAX_FILES:
        raise RolloutError([f"files: {len(files)} files; the limit is {MAX_FILES}"])
    errors = []
    for rel, text in files.items():
        if not isinstance(rel, str) or not _tree_file(rel):
            errors.append(f"files: {rel!r} is not a config tree file (site.yaml, keystages/*.yaml, rooms/*.yaml)")
        elif not isinstance(text, str):
            errors.append(f"{name}/{rel}: content must be text")
        elif len(text.encode("utf-8")) > MAX_FILE_BYTES:
            errors.append(f"{name}/{rel}: larger than {MAX_FILE_BYTES // 1024} KiB")
    if errors:
        raise RolloutError(errors)
    safe_name = name if protocol.ID_RE.match(name or "") else "config"
    with tempfile.TemporaryDirectory(prefix="rollout-") as scratch:
        root = Path(scratch) / safe_name
        for rel, text in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        try:
            tree = load_tree(root)
        except ConfigInvalid as exc:
            raise RolloutError([str(e) for e in exc.errors]) from None
    return tree, dict(sorted(files.items()))


def unified_diff(old_files: dict[str, str], new_files: dict[str, str], old_label: str, new_label: str) -> str:
    """Unified diff of two trees, file by file (added/removed files diff against nothing)."""
    out: list[str] = []
    for rel in sorted(set(old_files) | set(new_files)):
        a, b = old_files.get(rel), new_files.get(rel)
        if a == b:
            continue
        out.extend(difflib.unified_diff(
            (a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
            fromfile=f"{old_label}/{rel}" if a is not None else "/dev/null",
            tofile=f"{new_label}/{rel}" if b is not None else "/dev/null"))
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match (weak comparison; ``*`` matches)."""
    if not header:
        return False
    for part in header.split(","):
        part = part.strip()
        if part == "*" or part.removeprefix("W/") == etag:
            return True
    return False


# --------------------------------------------------------------------------- the service


class Rollouts:
    """Rollout state over the store; ``publish_cmd(topic, payload_bytes, qos, retain)`` tells devices."""

    def __init__(self, store, *, prefix: str = protocol.DEFAULT_PREFIX,
                 publish_cmd: Callable[[str, bytes, int, bool], Any] | None = None,
                 on_live: Callable[[ConfigTree], Any] | None = None, sites=None):
        self.store = store
        self.prefix = prefix
        self.publish_cmd = publish_cmd
        self.on_live = on_live
        self.sites = sites  # server.sites.Sites: the other schools' trees (device id clashes)
        # Called after each publish or rollback with (old_tree, new_tree, actor, why, kind,
        # version, change): server/allowlist.py keeps each school's allowlist change log with it.
        self.on_published: list[Callable[..., Any]] = []
        self._trees: dict[str, ConfigTree] = {}
        self._compiled: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self._adopt_unsited()

    def _adopt_unsited(self) -> None:
        # Rollouts stored before tenancy have no site: their own tree says which it is.
        for version in self.store.unsited_rollout_versions():
            tree = self.tree(version)
            if tree is not None:
                self.store.set_rollout_site(version, tree.site.site)

    # ------------------------------------------------------------------ reading
    def _site(self, site: str | None) -> str | None:
        # No site named: the collector's one school (callers acting for staff always name one).
        if site is None and self.sites is not None:
            return self.sites.single()
        return site

    def current(self, site: str | None = None) -> dict | None:
        """The live rollout row of *site* (highest seq), or None before its first publish."""
        site = self._site(site)
        return self.store.current_rollout(site) if site else None

    def history(self, limit: int = 200, site: str | None = None) -> list[dict]:
        site = self._site(site)
        return self.store.list_rollouts(limit, site) if site else []

    def live_trees(self) -> list[ConfigTree]:
        """The live tree of every site that has had a rollout."""
        trees = [self.tree(row["version"]) for _, row in sorted(self.store.live_rollouts().items())]
        return [t for t in trees if t is not None]

    def version_site(self, version: str) -> str | None:
        """The site a published version is for (None if unknown)."""
        tree = self.tree(version)
        return tree.site.site if tree is not None else None

    def files(self, version: str) -> dict[str, str] | None:
        return self.store.config_files(version)

    def tree(self, version: str) -> ConfigTree | None:
        with self._lock:
            cached = self._trees.get(version)
        if cached is not None:
            return cached
        data = self.store.config_tree(version)
        if data is None:
            return None
        tree = ConfigTree.from_dict(data)
        with self._lock:
            self._trees[version] = tree
        return tree

    def live_tree(self, site: str | None = None) -> ConfigTree | None:
        row = self.current(site)
        return self.tree(row["version"]) if row else None

    def compiled(self, device: str, site: str | None) -> tuple[str, bytes] | None:
        """(version, JSON body) of *device*'s compiled config from *site*'s live tree, or None
        before that site's first publish.

        Raises KeyError if the live tree has no such device."""
        row = self.current(site)
        if row is None:
            return None
        version = row["version"]
        key = (version, device)
        with self._lock:
            body = self._compiled.get(key)
        if body is None:
            tree = self.tree(version)
            body = json.dumps(tree.for_device(device), separators=(",", ":"), sort_keys=True).encode()
            with self._lock:
                if len(self._compiled) > 5000:
                    self._compiled.clear()
                self._compiled[key] = body
        return version, body

    def diff(self, old: str | None, new: str, site: str | None) -> str:
        """Unified diff between two of *site*'s versions (another site's version is unknown here)."""
        for version in (old, new):
            if version and self.version_site(version) != site:
                raise RolloutError([f"unknown version {version!r}"], status=404)
        new_files = self.files(new) or {}
        old_files = (self.files(old) or {}) if old else {}
        return unified_diff(old_files, new_files, old or "empty", new)

    # ------------------------------------------------------------------ writing
    def publish(self, files: dict[str, str], actor: str, why: str, *, site: str | None | object = TREE_SITE,
                name: str = "config", kind: str = "publish", change: dict | None = None) -> Published:
        """Validate, store, audit and announce *site*'s tree; RolloutError (nothing changed) if bad.
        Staff-facing callers pass the site the technician works in; without one, the tree's
        own site is taken (the server's own callers).  *change*: the approved allowlist change
        this publish carries out (server/allowlist.py)."""
        why = (why or "").strip() if isinstance(why, str) else ""
        if not why:
            raise RolloutError(["why: say why this change is made (it goes in the audit log)"])
        if len(why) > 2000:
            raise RolloutError(["why: keep it under 2000 characters"])
        tree, files = check_files(files, name)
        if site is TREE_SITE:
            site = tree.site.site
        if not site or tree.site.site != site:
            raise RolloutError([f"{name}/site.yaml: site: this tree is for site {tree.site.site!r}, but you are "
                                f"working in {site or 'no school'!r}; switch to that school first"], status=403)
        clashes = self.sites.conflicts(tree) if self.sites is not None else []
        if clashes:
            raise RolloutError([f"{name}/{c}" for c in clashes], status=409)
        return self._record(tree, files, actor, why, kind, change)

    def rollback(self, actor: str, why: str, *, site: str | None = None) -> Published:
        """Re-publish the version that was live before *site*'s current one (no site: the
        collector's one school)."""
        why = (why or "").strip() if isinstance(why, str) else ""
        if not why:
            raise RolloutError(["why: say why you roll back (it goes in the audit log)"])
        current = self.current(site)
        if current is None:
            raise RolloutError(["nothing has been published yet, so there is nothing to roll back"], status=409)
        target = current["previous"]
        if not target:
            raise RolloutError([f"version {current['version']} is the first one published; "
                                "there is no earlier version to go back to"], status=409)
        tree = self.tree(target)
        files = self.files(target)
        return self._record(tree, files, actor, why, "rollback")

    def _record(self, tree: ConfigTree, files: dict[str, str], actor: str, why: str, kind: str,
                change: dict | None = None) -> Published:
        version = tree.version
        before = self.current(tree.site.site)
        old_tree = self.tree(before["version"]) if before else None
        tree_json = json.dumps(tree.to_dict(), sort_keys=True, separators=(",", ":"))
        files_json = json.dumps(files, sort_keys=True)
        now = utcnow()
        rollout_id = new_id()
        devices = len(tree.device_ids())

        def audit_details(previous: str | None, old_files: dict[str, str]) -> str:
            # The audit log gets the unified diff against the version this one replaces.
            diff = unified_diff(old_files, files, previous or "empty", version)
            if len(diff) > MAX_AUDIT_DIFF:
                diff = diff[:MAX_AUDIT_DIFF] + "\n... (diff truncated; see the rollout page)\n"
            return json.dumps({"rollout": rollout_id, "version": version, "previous": previous, "why": why,
                               "devices": devices, "diff": diff})

        row = self.store.add_rollout(rollout_id=rollout_id, ts=now, version=version, tree_json=tree_json,
                                     files_json=files_json, kind=kind, actor=actor, why=why, devices=devices,
                                     site=tree.site.site, audit_details=audit_details)
        if row is None:
            raise RolloutError([f"version {version} is already live; nothing to publish"], status=409)
        published = Published(row["id"], row["seq"], version, row["previous"], kind, actor, why, devices, now)
        with self._lock:
            self._trees[version] = tree
        if self.on_live is not None:
            try:
                self.on_live(tree)
            except Exception:  # noqa: BLE001 - the rollout is stored; do not fail it
                log.exception("on_live hook failed")
        for hook in self.on_published:
            try:
                hook(old_tree, tree, actor=actor, why=why, kind=kind, version=version, change=change)
            except Exception:  # noqa: BLE001 - the rollout is stored; do not fail it
                log.exception("on_published hook failed")
        published.notified = self.notify(tree, actor)
        log.info("config %s %s by %s (%s devices told): %s", kind, version, actor, published.notified, why)
        return published

    def notify(self, tree: ConfigTree, actor: str) -> int:
        """reload-config on every device's cmd topic (not retained); returns how many were sent."""
        if self.publish_cmd is None:
            log.warning("no MQTT connection: devices will pick up version %s at their next fetch", tree.version)
            return 0
        payload = protocol.encode({"cmd": "reload-config", "by": actor})
        sent = 0
        for room in tree.rooms.values():
            for device in room.devices:
                topic = protocol.topic(self.prefix, tree.site.site, room.room, device.id, "cmd")
                try:
                    self.publish_cmd(topic, payload, protocol.QOS["cmd"], False)
                    sent += 1
                except Exception as exc:  # noqa: BLE001 - one bad publish must not stop the rest
                    log.warning("reload-config to %s failed: %s", device.id, exc)
        return sent

    # ------------------------------------------------------------------ per-room status
    def status(self, site: str | None = None, rooms: list[str] | None = None) -> dict:
        """Which version runs where, per room of *site*'s live tree."""
        site = self._site(site)
        cur = self.current(site)
        tree = self.tree(cur["version"]) if cur else None
        if tree is None:
            return {"site": site, "live": None, "rooms": [], "counts": {}}
        live = cur["version"]
        devices = {d["id"]: d for d in self.store.list_devices(site=site)}
        last_events = self.store.latest_events(("config_applied", "config_rejected"), site)
        last_applied = self.store.latest_events(("config_applied",), site)
        counts = {"current": 0, "pending": 0, "rejected": 0}
        out_rooms = []
        for room_id, room in sorted(tree.rooms.items()):
            if rooms is not None and room_id not in rooms:
                continue
            rows = []
            for device in room.devices:
                d = devices.get(device.id, {})
                ev = last_events.get(device.id)
                data = _json(ev["data"]) if ev else {}
                # What runs: the newer of the last config_applied event and the
                # config_version of the retained status / latest heartbeat.
                running = d.get("config_version")
                reported_at = max(d.get("status_ts") or "", _json(d.get("last_heartbeat")).get("ts") or "")
                applied = last_applied.get(device.id)
                applied_version = _json(applied["data"]).get("version") if applied else None
                if applied_version and (not running or applied["ts"] >= reported_at):
                    running = applied_version
                if running == live:
                    state = "current"
                elif ev and ev["type"] == "config_rejected" and data.get("version") == live:
                    state = "rejected"
                else:
                    state = "pending"
                counts[state] += 1
                rows.append({"device": device.id, "seat": device.seat, "running": running, "state": state,
                             "online": d.get("status") or "unknown", "last_seen": d.get("last_seen"),
                             "event": ev["type"] if ev else None, "event_ts": ev["ts"] if ev else None,
                             "reason": _reason(data) if ev and ev["type"] == "config_rejected" else None})
            out_rooms.append({"room": room_id, "name": room.name, "key_stage": room.key_stage, "devices": rows,
                              "current": sum(1 for r in rows if r["state"] == "current")})
        return {"site": site, "live": live, "rollout": cur, "rooms": out_rooms, "counts": counts}


def _json(text: Any) -> dict:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _reason(data: dict) -> str | None:
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        return str(errors[0])[:300]
    return str(data["reason"])[:300] if data.get("reason") else None


__all__ = ["Rollouts", "RolloutError", "Published", "read_files", "check_files", "unified_diff", "etag_matches",
           "SourceError"]


# --------------------------------------------------------------------------- command line


def _cli_session(args):
    """Log in to the collector's API; returns (requests.Session, base URL)."""
    import getpass
    import os
    import sys

    import requests

    from agent.errors import UserError

    base = (args.server or os.environ.get("CLASSROOM_SERVER") or "http://127.0.0.1:8080").rstrip("/")
    user = args.user or os.environ.get("CLASSROOM_USER")
    if not user:
        raise UserError("--user: say who is publishing (or set CLASSROOM_USER)")
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise UserError(f"--password-file {args.password_file}: {exc.strerror}") from None
    elif os.environ.get("CLASSROOM_PASSWORD"):
        password = os.environ["CLASSROOM_PASSWORD"]
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    session = requests.Session()
    try:
        resp = session.post(f"{base}/api/v1/login", json={"username": user, "password": password}, timeout=30)
    except requests.RequestException as exc:
        raise UserError(f"--server {base}: cannot connect ({type(exc).__name__})") from None
    if resp.status_code != 200:
        raise UserError(f"--server {base}: login as {user!r} refused (HTTP {resp.status_code})")
    session.headers["Authorization"] = f"Bearer {resp.json()['token']}"
    site = getattr(args, "site", None)
    if site:
        # One school at a time: act in the one this tree (or --site) is for.
        try:
            switched = session.post(f"{base}/api/v1/site", json={"site": site}, timeout=30)
        except requests.RequestException as exc:
            raise UserError(f"--server {base}: {type(exc).__name__}") from None
        if switched.status_code != 200:
            raise UserError(f"site {site!r}: {user!r} does not work at that school on {base}")
    return session, base


def _cli_errors(resp, what: str) -> int:
    import sys

    from agent.errors import UserError

    try:
        detail = resp.json().get("detail")
    except ValueError:
        detail = None
    errors = detail.get("errors") if isinstance(detail, dict) else None
    if not errors:
        raise UserError(f"{what} refused: HTTP {resp.status_code}: {detail or resp.text[:200]}")
    for line in errors:
        print(line, file=sys.stderr)
    print(f"classroom-server: {what} refused: {len(errors)} problem(s); nothing was changed", file=sys.stderr)
    return 1


def cli_publish(args) -> int:
    import requests

    from agent.errors import UserError, print_problems

    root = Path(args.dir)
    # Check locally first: the same file:line errors, without needing the server.
    try:
        args.site = load_tree(root).site.site
    except ConfigInvalid as exc:
        return print_problems("classroom-server", exc.errors, args.dir, "publish refused; nothing was changed")
    try:
        files = read_files(root)
    except RolloutError as exc:
        raise UserError(exc.errors[0]) from None
    if not (args.why or "").strip():
        raise UserError('--why: say why this change is made, e.g. --why "allow topmarks for KS1 maths"')
    session, base = _cli_session(args)
    name = root.resolve().name if protocol.ID_RE.match(root.resolve().name or "") else "config"
    try:
        resp = session.post(f"{base}/api/v1/config/rollouts", json={"files": files, "why": args.why, "name": name},
                            timeout=60)
    except requests.RequestException as exc:
        raise UserError(f"--server {base}: {type(exc).__name__}") from None
    if resp.status_code != 201:
        return _cli_errors(resp, "publish")
    done = resp.json()
    print(f"published version {done['version']} (was {done['previous'] or 'nothing'}): "
          f"{done['notified']} of {done['devices']} devices told to reload")
    return 0


def cli_propose(args) -> int:
    """``config propose DIR --why``: the tree as an allowlist change for the DSL to approve
    (server/allowlist.py); nothing is published until the DSL approves it."""
    import requests

    from agent.errors import UserError, print_problems

    root = Path(args.dir)
    try:
        args.site = load_tree(root).site.site  # proposed at the school the tree is for
    except ConfigInvalid as exc:
        return print_problems("classroom-server", exc.errors, args.dir, "proposal refused; nothing was changed")
    try:
        files = read_files(root)
    except RolloutError as exc:
        raise UserError(exc.errors[0]) from None
    if not (args.why or "").strip():
        raise UserError('--why: say why this change is needed (the DSL reads it)')
    session, base = _cli_session(args)
    try:
        resp = session.post(f"{base}/api/v1/allowlist/changes",
                            json={"kind": "files", "files": files, "reason": args.why, "source": "yaml"}, timeout=60)
    except requests.RequestException as exc:
        raise UserError(f"--server {base}: {type(exc).__name__}") from None
    if resp.status_code != 201:
        return _cli_errors(resp, "proposal")
    done = resp.json()
    added = ", ".join(done["add_domains"]) or "nothing"
    removed = ", ".join(done["remove_domains"]) or "nothing"
    print(f"proposed change {done['id'][:8]}: allows {added}; stops allowing {removed}. "
          f"The DSL approves it on {base}/allowlist; it is published then.")
    return 0


def cli_rollback(args) -> int:
    import requests

    from agent.errors import UserError

    if not (args.why or "").strip():
        raise UserError('--why: say why you roll back, e.g. --why "5b lost BBC Bitesize"')
    session, base = _cli_session(args)
    try:
        resp = session.post(f"{base}/api/v1/config/rollback", json={"why": args.why}, timeout=60)
    except requests.RequestException as exc:
        raise UserError(f"--server {base}: {type(exc).__name__}") from None
    if resp.status_code != 201:
        return _cli_errors(resp, "rollback")
    done = resp.json()
    print(f"rolled back to version {done['version']} (was {done['previous']}): "
          f"{done['notified']} of {done['devices']} devices told to reload")
    return 0


def add_cli(csub) -> None:
    """``config publish DIR --why``, ``config rollback --why`` and ``config propose DIR --why`` on
    classroom-server's config parser."""

    def common(p):
        p.add_argument("--why", required=True, help="the reason, for the audit log")
        p.add_argument("--server", metavar="URL",
                       help="collector URL (default $CLASSROOM_SERVER or http://127.0.0.1:8080)")
        p.add_argument("--user", help="your technician account (default $CLASSROOM_USER)")
        p.add_argument("--password-file", metavar="FILE", help="read the password from FILE (default: "
                       "$CLASSROOM_PASSWORD, else prompt / stdin)")

    p = csub.add_parser("publish", help="validate a config tree and roll it out to every device")
    p.add_argument("dir", metavar="DIR")
    common(p)
    p.set_defaults(func=cli_publish)
    p = csub.add_parser("rollback", help="go back to the version that was live before the current one")
    common(p)
    p.add_argument("--site", metavar="SITE", help="the school whose config to roll back (if you work at several)")
    p.set_defaults(func=cli_rollback)
    p = csub.add_parser("propose", help="propose a config tree as an allowlist change for the DSL to approve")
    p.add_argument("dir", metavar="DIR")
    common(p)
    p.set_defaults(func=cli_propose)
