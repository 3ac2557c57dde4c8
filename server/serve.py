"""``classroom-server serve``, ``user ...`` and ``enrol-token``: running the collector.

``serve`` runs, in one process: the HTTP API (uvicorn), one MQTT ingest worker (and,
with ``--ingest-workers N``, N-1 more in processes of their own, started again if they
die: server/ingest/pool.py), the daily retention pass, the dark-device checker and, with ``--notify FILE``, the escalation
e-mails and webhooks (server/notify/).  Run several ``serve`` processes (or
machines) against one PostgreSQL database and they share the ingest load through the
MQTT 5 shared subscription.  One collector may serve several schools: ``--config`` once
per school's config folder (server/sites.py); ``--oidc FILE`` turns on single sign-on
(server/http/oidc.py).  Secrets come from files or stdin, never the command line
(which other users can read in ``ps``), and are never logged.

``user add|grant|revoke|disable|enable|list`` manage staff accounts and the schools they
belong to from the server's own shell (the trust's IT; a school's admin uses ``/users``).
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

from agent.config.credentials import read_password
from agent.errors import UserError, problems_line

DEFAULT_DB = "sqlite:////var/lib/classroom-server/server.db"  # sqlite:/// + absolute path


def _open_store(url: str):
    from .store import Store, StoreError

    try:
        return Store.open(url)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. sqlite cannot open the file
        raise UserError(f"--db {url}: {str(exc).splitlines()[0]}") from None


def _load_tree(config_dir: str | None):
    if not config_dir:
        return None
    from agent.config import ConfigInvalid, load_tree

    try:
        return load_tree(Path(config_dir))
    except ConfigInvalid as exc:
        raise UserError(problems_line(exc.errors, f"run `classroom-server config validate {config_dir}`")) from None


def _load_trees(config_dirs: list[str] | None) -> list:
    """One tree per ``--config`` folder (one per school); two for one site is an error."""
    from .sites import Sites

    trees, seen = [], {}
    sites = Sites()
    for folder in config_dirs or []:
        tree = _load_tree(folder)
        site = tree.site.site
        if site in seen:
            raise UserError(f"--config {folder}: site {site!r} is already given by --config {seen[site]}")
        clashes = sites.conflicts(tree)
        if clashes:
            raise UserError(f"--config {folder}/{clashes[0]}")
        seen[site] = folder
        sites.set(tree)
        trees.append(tree)
    return trees


def _is_loopback(bind: str) -> bool:
    import ipaddress

    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _load_notify(path: str | None, trees: list):
    """The checked notify file (server/notify/settings.py), or None; one-line errors.  Its
    warnings are given per school (each has its own escalation contacts)."""
    if not path:
        return None
    from agent.config import ConfigInvalid

    from .notify import load_notify, notify_warnings, unknown_webhook_sites

    try:
        settings = load_notify(path)
    except ConfigInvalid as exc:
        raise UserError(problems_line(exc.errors, f"run `classroom-server notify check {path}`")) from None
    log = logging.getLogger("server.notify")
    for tree in trees or [None]:
        where = f"{tree.site.site}: " if tree is not None and len(trees) > 1 else ""
        for warning in notify_warnings(settings, tree):
            log.warning("notify: %s%s", where, warning)
    if trees:
        for warning in unknown_webhook_sites(settings, [t.site.site for t in trees]):
            log.warning("notify: %s", warning)
    return settings


def cmd_serve(args) -> int:
    import uvicorn

    from .http.app import Settings, create_app
    from .devices import DarkChecker
    from .ingest import Ingest, Metrics
    from .retention import Retention

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # A broker-config credentials YAML or a one-line password file both work.
    password = read_password(args.mqtt_password_file) if args.mqtt_password_file else None
    if args.plain_http and not _is_loopback(args.bind):
        raise UserError(f"--plain-http: only with a loopback --bind (127.0.0.1 or ::1), not {args.bind!r}; "
                        "on a network, put HTTPS in front (docs/server.md)")
    trees = _load_trees(args.config)
    prefixes = {t.site.broker.prefix for t in trees}
    if len(prefixes) > 1 and not args.prefix:
        raise UserError(f"--config: the schools' site.yaml give different broker.prefix values "
                        f"({', '.join(sorted(prefixes))}); one collector uses one prefix (set --prefix)")
    notify_settings = _load_notify(args.notify, trees)
    prefix = args.prefix or (trees[0].site.broker.prefix if trees else None)
    oidc = None
    if args.oidc:
        from .http.oidc import load_oidc_settings

        oidc = load_oidc_settings(args.oidc)
    settings = Settings(db_url=args.db, config_dirs=tuple(args.config or ()), broker_url=args.broker,
                        mqtt_username=args.mqtt_username, prefix=prefix, cookie_secure=not args.plain_http,
                        oidc=oidc)
    store = _open_store(args.db)
    metrics = Metrics()
    ingest = None
    if args.broker:
        try:
            ingest = Ingest(store, args.broker, prefix=prefix or "classroom/v1", username=args.mqtt_username,
                            password=password, ca_file=args.ca_file, metrics=metrics,
                            session_expiry=args.ingest_session_expiry, client_id=args.ingest_id)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    pool = None
    if args.broker and args.ingest_workers > 1:
        from .ingest.pool import WorkerPool

        def worker_options(i: int) -> dict:
            # One broker account per connection: the broker ties the client id to the
            # username (broker-config --ingest-workers writes USER-1 .. USER-(N-1)).  The same
            # id every time worker i starts, so a restarted worker finds its broker session.
            return dict(prefix=prefix or "classroom/v1", username=f"{args.mqtt_username}-{i}"
                        if args.mqtt_username else None, password=password, ca_file=args.ca_file,
                        session_expiry=args.ingest_session_expiry,
                        client_id=f"{args.ingest_id}-{i}" if args.ingest_id else None)

        pool = WorkerPool(args.db, args.broker, args.ingest_workers, worker_options, metrics).start()

    def publish(topic: str, payload: bytes, qos: int) -> None:
        info = ingest.publish(topic, payload, qos)
        if info.rc != 0:
            raise RuntimeError(f"publish failed (rc={info.rc})")

    app = create_app(settings, store=store, tree=trees, publisher=publish if ingest else None, metrics=metrics,
                     ingest=ingest)
    if ingest is not None:
        def fan_out(kind, where, data):
            for listener in list(app.state.listeners):
                listener(kind, where, data)

        ingest.listeners.append(fan_out)
        ingest.start()
    def dark_alert(alert: dict) -> None:
        for listener in list(app.state.listeners):
            listener("device_alert", None, alert)

    notifier = None
    if notify_settings is not None:
        from .notify import Notifier, RiskNotices

        # Each alert's messages go to its own school's contacts (its tree's escalation.contacts).
        notifier = Notifier(store, notify_settings, lambda: app.state.sites, app.state.presence)
        app.state.listeners.append(notifier.listener)  # after presence: it has seen every _watch before
        # Guard events, failed filter checks and concerns about adults, and high-risk blocked
        # attempts to the DSL (server/notify/events.py, risk.py): sent by the same thread,
        # each to its own school's contacts.
        from .notify.events import EventNotices

        notices = EventNotices(store, notify_settings, lambda: app.state.sites, wake=notifier.poke)
        notifier.sources.append(notices)
        notifier.sources.append(RiskNotices(store, notify_settings, lambda: app.state.sites))
        app.state.listeners.append(notices.listener)
        app.state.event_notices = notices
    # Background work runs once per school (each school's own tree, time zone and periods).
    from .filtercheck import NightlyCheck

    nightly = NightlyCheck(store, lambda: app.state.sites, app.state.rollouts.publish_cmd,
                           lambda: app.state.rollouts.prefix, hour=args.filter_check_hour)
    app.state.listeners.append(nightly.listener)
    dark = DarkChecker(store, lambda: app.state.sites, interval=settings.dark_check_seconds, on_alert=dark_alert)
    retention = Retention(store, lambda: app.state.sites)
    from .reports import DigestScheduler, SmtpSettings  # weekly digest (docs/dashboard.md)

    digest = DigestScheduler(store, args.reports_dir, lambda: app.state.sites, smtp=SmtpSettings.from_env())
    dark.start()
    retention.start()
    digest.start()
    if ingest is not None:
        nightly.start()
    if notifier is not None:
        notifier.start()
    try:
        uvicorn.run(app, host=args.bind, port=args.port, log_level="info", proxy_headers=True)
    finally:
        dark.stop()
        retention.stop()
        digest.stop()
        nightly.stop()
        if notifier is not None:
            notifier.stop()
        if ingest is not None:
            ingest.stop()
        if pool is not None:
            pool.stop()
        store.close()
    return 0


def _known_sites(store) -> list[str]:
    """The schools this database has a published config for."""
    return sorted(store.live_rollouts())


def _membership(store, role: str, site: str | None) -> dict[str, str]:
    """{site: role} for a new membership from ``--role`` / ``--site``."""
    from .http.auth import ROLES, TRUST_ROLE, TRUST_SITE

    if role not in ROLES:
        raise UserError(f"--role {role!r}: use one of {', '.join(ROLES)}")
    if role == TRUST_ROLE:
        if site not in (None, TRUST_SITE):
            raise UserError("--role trust: the trust level is every school; leave out --site")
        return {TRUST_SITE: role}
    if site is None:
        known = _known_sites(store)
        if len(known) > 1:
            raise UserError(f"--site: this collector serves several schools ({', '.join(known)}); say which")
        # One school: that one.  None published yet: `serve` gives the account its one
        # school when it starts (a single-school install needs no --site).
        return {known[0]: role} if known else {}
    if site == TRUST_SITE:
        raise UserError("--site '*': only --role trust belongs to the trust level")
    from agent.config.schema import check_id

    try:
        check_id(site)
    except ValueError as exc:
        raise UserError(f"--site: {exc}") from None
    return {site: role}


def cmd_user_add(args) -> int:
    from .http.auth import check_staff_name, hash_password

    try:
        check_staff_name(args.name)
    except ValueError as exc:
        raise UserError(f"NAME: {exc}") from None
    password = None
    if not args.sso_only:
        password = read_password(args.password_file) if args.password_file else sys.stdin.readline().rstrip("\n")
        if len(password) < 10:
            raise UserError("password: use at least 10 characters (a passphrase of three words is good)")
    store = _open_store(args.db)
    try:
        sites = _membership(store, args.role, args.site)
        if store.get_user(args.name):
            raise UserError(f"NAME: {args.name!r} already exists (`user grant` adds a school to it)")
        # No password: the account signs in only by single sign-on.
        store.add_user(args.name, args.role, hash_password(password) if password else "", args.display_name, sites)
        for site in sites or {None: None}:
            store.audit("cli", "user.add", args.name, {"role": args.role}, site=site if site != "*" else None)
    finally:
        store.close()
    where = ", ".join(sorted(sites)) or "the school `serve` is started for"
    print(f"{args.name}: added as {args.role} at {where}")
    return 0


def cmd_user_grant(args) -> int:
    store = _open_store(args.db)
    try:
        if store.get_user(args.name) is None:
            raise UserError(f"NAME: {args.name!r} is not an account (`user add` makes one)")
        for site, role in _membership(store, args.role, args.site).items():
            store.grant_site(args.name, site, role)
            store.delete_user_sessions(args.name)
            store.audit("cli", "user.grant", args.name, {"role": role}, site=site if site != "*" else None)
            print(f"{args.name}: {role} at {site}")
    finally:
        store.close()
    return 0


def cmd_user_revoke(args) -> int:
    store = _open_store(args.db)
    try:
        if not store.revoke_site(args.name, args.site):
            raise UserError(f"{args.name!r} does not belong to site {args.site!r}")
        store.delete_user_sessions(args.name)
        store.audit("cli", "user.revoke", args.name, None, site=args.site if args.site != "*" else None)
    finally:
        store.close()
    print(f"{args.name}: no longer at {args.site}")
    return 0


def cmd_user_disable(args) -> int:
    disabled = args.user_command == "disable"
    store = _open_store(args.db)
    try:
        if not store.update_user(args.name, disabled=int(disabled)):
            raise UserError(f"NAME: {args.name!r} is not an account")
        if disabled:
            store.delete_user_sessions(args.name)  # a leaver is out at once (policy 002 §6.9)
        store.audit("cli", "user.change", args.name, {"disabled": int(disabled)})
    finally:
        store.close()
    print(f"{args.name}: {'disabled' if disabled else 'enabled'}")
    return 0


def cmd_user_list(args) -> int:
    store = _open_store(args.db)
    try:
        rows = store.list_users(site=args.site)
    finally:
        store.close()
    print(f"{'username':24} {'schools (role)':40} {'last sign-in':28} state")
    for row in rows:
        sites = ", ".join(f"{site} ({m['role']})" for site, m in sorted(row["sites"].items())) or "-"
        last = f"{row['last_login_at'] or 'never'}" + (f" ({row['last_login_via']})" if row["last_login_via"] else "")
        print(f"{row['username']:24} {sites:40} {last:28} {'disabled' if row['disabled'] else 'active'}")
    return 0


def cmd_enrol_token(args) -> int:
    from .devices import EnrolError, create_enrol_token

    tree = _load_tree(args.config)
    store = _open_store(args.db)
    try:
        result = create_enrol_token(store, args.device, "cli", tree, hours=args.hours)
    except EnrolError as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    print(f"{result['device']}: one-time enrolment token (expires {result['expires_at']}):")
    print(result["token"])
    return 0


def add_commands(sub) -> None:
    """Register serve, user and enrol-token on classroom-server's subparsers."""
    p = sub.add_parser("serve", help="run the collector: HTTP API, MQTT ingest, retention, dark-device checks")
    p.add_argument("--config", metavar="DIR", action="append",
                   help="a school's config tree (site.yaml, rooms/, keystages/); once per school")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL", help="sqlite:///PATH (sqlite:////var/... for an absolute path) or postgresql://USER@HOST/DB")
    p.add_argument("--broker", metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--prefix", help="topic prefix (default: site.yaml broker.prefix)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--mqtt-username", default="classroom-server")
    p.add_argument("--mqtt-password-file", metavar="FILE")
    p.add_argument("--ca-file", metavar="FILE", help="CA certificate for mqtts://")
    p.add_argument("--ingest-id", metavar="ID", default=f"classroom-server-{socket.gethostname().lower()}"[:60],
                   help="MQTT client id of this ingest worker; unique per worker process group "
                        "(default classroom-server-HOSTNAME; extra --ingest-workers add -1, -2, ...)")
    p.add_argument("--ingest-workers", type=int, default=1, metavar="N",
                   help="ingest processes sharing the MQTT subscription (one per CPU core helps; default 1)")
    # DESIGN rule 5: nothing is lost across a server restart, so by default the broker keeps
    # this worker's session (and queues QoS 1 messages) for an hour while it is away.
    p.add_argument("--ingest-session-expiry", type=int, default=3600, metavar="SECONDS",
                   help="how long the broker keeps this worker's session and queues messages while it is "
                        "away (default 3600); 0 = clean start, a dead worker leaves nothing behind")
    p.add_argument("--plain-http", action="store_true",
                   help="local demo only: session cookies without Secure, for a browser on this machine over "
                        "plain http://127.0.0.1 (refused with any other --bind; on a network put HTTPS in front)")
    p.add_argument("--filter-check-hour", type=int, default=2, choices=range(0, 24), metavar="HOUR",
                   help="school-time hour at which every device runs its filter check each night (default 2)")
    p.add_argument("--notify", metavar="FILE",
                   help="escalation e-mails and webhooks: SMTP, webhooks, what to send (docs/server.md); checked "
                        "at start like the config")
    p.add_argument("--oidc", metavar="FILE", help="single sign-on settings (YAML: issuer, client, group -> "
                                                 "school and role map; docs/server.md)")
    p.add_argument("--reports-dir", default="/var/lib/classroom-server/reports", metavar="DIR",
                   help="where the weekly digest (HTML + CSV) is written; e-mail via CLASSROOM_SMTP_* (optional)")
    p.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage staff accounts and the schools they belong to")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION")
    usub.required = True
    p = usub.add_parser("add", help="add a staff account; the password is read from stdin or --password-file")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, help="teacher, dsl, technician, admin, office, or trust (every "
                                                 "school's totals and health, no pupils' records)")
    p.add_argument("--site", metavar="SITE", help="the school (site.yaml site:); needed when the collector "
                                                  "serves several")
    p.add_argument("--display-name")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--sso-only", action="store_true", help="no password: the account signs in by single sign-on")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.set_defaults(func=cmd_user_add)
    p = usub.add_parser("grant", help="give an account a role at a school (or replace its role there)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True)
    p.add_argument("--site", metavar="SITE")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.set_defaults(func=cmd_user_grant)
    p = usub.add_parser("revoke", help="take an account off a school")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--site", required=True, metavar="SITE")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.set_defaults(func=cmd_user_revoke)
    for action, text in (("disable", "a leaver: the account can no longer sign in, by password or single sign-on"),
                         ("enable", "let a disabled account sign in again")):
        p = usub.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
        p.set_defaults(func=cmd_user_disable)
    p = usub.add_parser("list", help="accounts, their schools and roles, last sign-in (for access reviews)")
    p.add_argument("--site", metavar="SITE", help="only this school's accounts")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.set_defaults(func=cmd_user_list)

    p = sub.add_parser("enrol-token", help="make a one-time token a device exchanges for its credentials")
    p.add_argument("--device", required=True, metavar="ID")
    p.add_argument("--hours", type=int, default=72)
    p.add_argument("--config", metavar="DIR", help="check the device is in this config tree")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.set_defaults(func=cmd_enrol_token)
