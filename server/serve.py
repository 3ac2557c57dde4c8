"""``classroom-server serve``, ``user add`` and ``enrol-token``: running the collector.

``serve`` runs, in one process: the HTTP API (uvicorn), one MQTT ingest worker, the
daily retention pass, the dark-device checker and, with ``--notify FILE``, the escalation
e-mails and webhooks (server/notify/).  Run several ``serve`` processes (or
machines) against one PostgreSQL database and they share the ingest load through the
MQTT 5 shared subscription.  Secrets come from files or stdin, never the command line
(which other users can read in ``ps``), and are never logged.
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


def _is_loopback(bind: str) -> bool:
    import ipaddress

    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _load_notify(path: str | None, tree):
    """The checked notify file (server/notify/settings.py), or None; one-line errors."""
    if not path:
        return None
    from agent.config import ConfigInvalid

    from .notify import load_notify, notify_warnings

    try:
        settings = load_notify(path)
    except ConfigInvalid as exc:
        raise UserError(problems_line(exc.errors, f"run `classroom-server notify check {path}`")) from None
    for warning in notify_warnings(settings, tree):
        logging.getLogger("server.notify").warning("notify: %s", warning)
    return settings


def ingest_worker(db: str, broker: str, options: dict) -> None:
    """An extra ingest-only process (``serve --ingest-workers N``): same store, same shared
    subscription, so N processes split the MQTT load across CPU cores."""
    import ctypes
    import signal
    import threading

    from .ingest import Ingest

    try:  # die with the serve process, even if it is killed
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    store = _open_store(db)
    ingest = Ingest(store, broker, **options).start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        ingest.stop()
        store.close()


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
    tree = _load_tree(args.config)
    notify_settings = _load_notify(args.notify, tree)
    prefix = args.prefix or (tree.site.broker.prefix if tree is not None else None)
    settings = Settings(db_url=args.db, config_dir=args.config, broker_url=args.broker,
                        mqtt_username=args.mqtt_username, prefix=prefix, cookie_secure=not args.plain_http)
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

    helpers = []
    if args.broker and args.ingest_workers > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        for i in range(1, args.ingest_workers):
            # One broker account per connection: the broker ties the client id to the
            # username (broker-config --ingest-workers writes USER-1 .. USER-(N-1)).
            worker_user = f"{args.mqtt_username}-{i}" if args.mqtt_username else None
            options = dict(prefix=prefix or "classroom/v1", username=worker_user, password=password,
                           ca_file=args.ca_file, session_expiry=args.ingest_session_expiry,
                           client_id=f"{args.ingest_id}-{i}" if args.ingest_id else None)
            proc = ctx.Process(target=ingest_worker, args=(args.db, args.broker, options), name=f"ingest-{i}",
                               daemon=True)
            proc.start()
            helpers.append(proc)

    def publish(topic: str, payload: bytes, qos: int) -> None:
        info = ingest.publish(topic, payload, qos)
        if info.rc != 0:
            raise RuntimeError(f"publish failed (rc={info.rc})")

    app = create_app(settings, store=store, tree=tree, publisher=publish if ingest else None, metrics=metrics,
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

        notifier = Notifier(store, notify_settings, lambda: app.state.tree, app.state.presence)
        app.state.listeners.append(notifier.listener)  # after presence: it has seen every _watch before
        # Guard events, failed filter checks and concerns about adults, and high-risk blocked
        # attempts to the DSL (server/notify/events.py, risk.py): sent by the same thread.
        from .notify.events import EventNotices

        notices = EventNotices(store, notify_settings, lambda: app.state.tree, wake=notifier.poke)
        notifier.sources.append(notices)
        notifier.sources.append(RiskNotices(store, notify_settings, lambda: app.state.tree))
        app.state.listeners.append(notices.listener)
        app.state.event_notices = notices
    from .filtercheck import NightlyCheck

    nightly = NightlyCheck(store, lambda: app.state.tree, app.state.rollouts.publish_cmd,
                           lambda: app.state.rollouts.prefix, hour=args.filter_check_hour)
    app.state.listeners.append(nightly.listener)
    dark = DarkChecker(store, lambda: app.state.tree, interval=settings.dark_check_seconds, on_alert=dark_alert)
    retention = Retention(store, lambda: app.state.tree)
    from .reports import DigestScheduler, SmtpSettings  # weekly digest (docs/dashboard.md)

    digest = DigestScheduler(store, args.reports_dir, lambda: app.state.tree, smtp=SmtpSettings.from_env())
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
        for proc in helpers:
            proc.terminate()
        for proc in helpers:
            proc.join(10)
        store.close()
    return 0


def cmd_user_add(args) -> int:
    from .http.auth import ROLES, check_staff_name, hash_password

    try:
        check_staff_name(args.name)
    except ValueError as exc:
        raise UserError(f"NAME: {exc}") from None
    if args.role not in ROLES:
        raise UserError(f"--role {args.role!r}: use one of {', '.join(ROLES)}")
    password = read_password(args.password_file) if args.password_file else sys.stdin.readline().rstrip("\n")
    if len(password) < 10:
        raise UserError("password: use at least 10 characters (a passphrase of three words is good)")
    store = _open_store(args.db)
    try:
        if store.get_user(args.name):
            raise UserError(f"NAME: {args.name!r} already exists")
        store.add_user(args.name, args.role, hash_password(password), args.display_name)
        store.audit("cli", "user.add", args.name, {"role": args.role})
    finally:
        store.close()
    print(f"{args.name}: added as {args.role}")
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
    p.add_argument("--config", metavar="DIR", help="the config tree (site.yaml, rooms/, keystages/)")
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
    p.add_argument("--reports-dir", default="/var/lib/classroom-server/reports", metavar="DIR",
                   help="where the weekly digest (HTML + CSV) is written; e-mail via CLASSROOM_SMTP_* (optional)")
    p.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage staff accounts")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION")
    usub.required = True
    p = usub.add_parser("add", help="add a staff account; the password is read from stdin or --password-file")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, help="teacher, dsl, technician, admin or office")
    p.add_argument("--display-name")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.set_defaults(func=cmd_user_add)

    p = sub.add_parser("enrol-token", help="make a one-time token a device exchanges for its credentials")
    p.add_argument("--device", required=True, metavar="ID")
    p.add_argument("--hours", type=int, default=72)
    p.add_argument("--config", metavar="DIR", help="check the device is in this config tree")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.set_defaults(func=cmd_enrol_token)
