"""``classroom-server notify check FILE`` and ``notify test FILE``: the notify file before it matters.

``check`` validates the file exactly as ``serve --notify`` does (every problem as
``file:line: key: message``) and says who would get an escalation.  ``test`` sends one
clearly marked test message to every recipient now, one attempt each, and prints each
result: the way to find a wrong SMTP password or a dead webhook before a pupil presses
the button.  Nothing is written to the store.
"""

from __future__ import annotations

import sys

from agent.config import ConfigInvalid
from agent.errors import UserError, print_problems
from agent.protocol import now_ts

from .channels import DeliveryError, EmailChannel, WebhookChannel
from .message import Notice
from .notifier import recipients_for
from .settings import load_notify, notify_warnings

PROG = "classroom-server"


def _tree(config_dir: str | None):
    from ..serve import _load_tree

    return _load_tree(config_dir)


def cmd_check(args) -> int:
    try:
        settings = load_notify(args.file)
    except ConfigInvalid as exc:
        return print_problems(PROG, exc.errors, args.file, "serve --notify would not start")
    tree = _tree(args.config)
    for warning in notify_warnings(settings, tree):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    channels = ([f"smtp {settings.smtp.host}:{settings.smtp.port}"] if settings.smtp else []) + \
        [f"webhook {w.name} ({w.format})" for w in settings.webhooks]
    print(f"{args.file}: ok: {', '.join(channels) or 'no channel'}")
    if tree is not None:
        for reason in ("escalated", "unwatched") + (("offsite",) if tree.site.offsite is not None else ()):
            who = recipients_for(settings, tree, reason)
            print(f"  {reason}: {', '.join(f'{c}:{r}' for c, r in who) or 'nobody'}")
        # High-risk blocked attempts (server/notify/risk.py): to whom, and for which risk lists.
        from .risk import notifying
        from .risk import recipients as risk_recipients

        lists = notifying(tree)
        who = risk_recipients(settings, tree) if settings.send_high_risk and lists else []
        print(f"  high-risk ({', '.join(lists) or 'no risk list notifies'}): "
              f"{', '.join(f'{c}:{r}' for c, r in who) or 'nobody'}")
    return 0


def cmd_test(args) -> int:
    try:
        settings = load_notify(args.file)
    except ConfigInvalid as exc:
        return print_problems(PROG, exc.errors, args.file)
    tree = _tree(args.config)
    targets = recipients_for(settings, tree, "escalated")
    if args.to:
        if settings.smtp is None:
            raise UserError("--to: the notify file has no smtp")
        targets = [("email", args.to)] + [t for t in targets if t[0] == "webhook"]
    if not targets:
        raise UserError("nobody to send to: no e-mail contacts (or no smtp) and no webhooks")
    room = next(iter(tree.rooms.values()), None) if tree is not None else None
    notice = Notice(reason="escalated", alert_id="00000000-0000-4000-8000-000000000000", state="escalated",
                    school=tree.site.school if tree is not None else "(test)", site=tree.site.site if tree else "test",
                    room=room.room if room else "test", room_name="TEST MESSAGE: nothing has happened",
                    device="test", seat=None, raised_at=now_ts(), status_now="cleared", by="a test",
                    tz=tree.site.timezone if tree is not None else "Europe/London",
                    dashboard_url=settings.dashboard_url or (str(tree.site.collector.url) if tree else None))
    channels = {"email": EmailChannel(settings.smtp) if settings.smtp else None,
                "webhook": WebhookChannel(settings.webhooks)}
    failed = 0
    for channel, recipient in targets:
        try:
            channels[channel].send(recipient, notice)
            print(f"{channel}:{recipient}: sent")
        except DeliveryError as exc:
            failed += 1
            print(f"{channel}:{recipient}: failed: {exc}")
    if failed:
        raise UserError(f"{failed} of {len(targets)} test message(s) failed")
    return 0


def add_parser(sub) -> None:
    """Register ``notify check`` and ``notify test`` on classroom-server's subcommands."""
    notify = sub.add_parser("notify", help="check the notify file (escalation e-mail and webhooks); send a test")
    nsub = notify.add_subparsers(dest="notify_command", metavar="ACTION")
    nsub.required = True
    p = nsub.add_parser("check", help="validate the notify file as `serve --notify` does; show who gets what")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--config", metavar="DIR", help="the config tree (for escalation.contacts)")
    p.set_defaults(func=cmd_check)
    p = nsub.add_parser("test", help="send one test message to every recipient now and print each result")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--config", metavar="DIR", help="the config tree (for escalation.contacts)")
    p.add_argument("--to", metavar="ADDRESS", help="e-mail only this address (and the webhooks)")
    p.set_defaults(func=cmd_test)
