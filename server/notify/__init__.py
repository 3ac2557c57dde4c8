"""Escalation beyond the room: e-mail and webhooks when a report is not answered, or is
made in a room nobody is watching (DESIGN.md "The promise": the office and the DSL are
told by a channel that does not depend on anyone having a page open).

settings.py (the notify file: SMTP, webhooks, what to send, retries; its secrets stay on
the collector), message.py (what a message says: room, seat, time in the school's zone,
links; never names or evidence), channels.py (one attempt by SMTP or HTTP POST, secrets
masked), notifier.py (which transitions, to whom, delivery records, retries), risk.py
(high-risk blocked attempts to the DSL at once, coalesced per device and risk list).  The rows
live in server/store/deliveries.py; who is watching a room in server/presence.py.
"""

from .channels import DeliveryError, EmailChannel, WebhookChannel
from .message import Notice
from .notifier import Notifier
from .risk import RiskNotices
from .settings import NotifySettings, load_notify, notify_warnings, unknown_webhook_sites

__all__ = ["DeliveryError", "EmailChannel", "Notice", "Notifier", "NotifySettings", "RiskNotices", "WebhookChannel",
           "load_notify", "notify_warnings", "unknown_webhook_sites"]
