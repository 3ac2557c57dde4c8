"""classroom-alerts: the teacher's room alert client (terminal, desktop notification,
optional staff-room pager).

It subscribes to ``{prefix}/{site}/{room}/+/alert`` and ``.../status`` with the teacher's own
broker account (the ACL lets a teacher read only their rooms), keeps a small board of alerts
(board.py), shows it in the terminal (view.py, or JSON lines with ``--json``), pops a
desktop notification (notify.py, ``notify-send``) and, on a Pi, drives a pager (pager.py:
gpiozero Buzzer + LED + an ack Button).  Acknowledge ("I'm coming") and clear are
``{"cmd": "ack"|"clear", "alert_id"}`` published QoS 1 on the device's reply topic under the
teacher's own username (client.py; the broker ties that level to the account and the device
takes ``by`` from it); the agent answers by publishing the new alert state, which is what the
board shows (the device is the source of truth).  Open alerts arrive retained, so a client
started after a press still shows it; the client announces itself on the room's ``_watch``
topic.  cli.py is the command line.

This package runs on a teacher's machine, not the collector: it imports nothing from the
rest of ``server`` (only the agent's wire and config contract), and this file stays light
because importing ``server.alerts`` runs ``server/__init__.py`` and this.
"""

PROG = "classroom-alerts"
